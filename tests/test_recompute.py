"""train/recompute.py: `model.gradient_checkpointing: auto` turns checkpointing on exactly when plan's estimate
does not fit in the free memory; explicit settings are kept; the choice reaches the run's preflight.json."""

from __future__ import annotations

import json
import re

import pytest

from phinetune.config import load_config
from phinetune.models.inspect import load_facts
from phinetune.models.plan import MARGIN, estimate
from phinetune.train import recompute


def config(*overrides: str):
    return load_config(None, ["model.name=phi3.5-mini", "data.max_length=4096", "train.batch_size=2", *overrides])


def need_without_checkpointing(cfg) -> float:
    """The figure the rule compares, computed here from plan directly (CPU: margin, no CUDA overhead)."""
    return estimate(
        load_facts("phi3.5-mini"), "lora", 4096, 2, False, "bf16", 16, "all-linear", cfg.adapter.dropout, "cpu"
    ).total * (1 + MARGIN)


@pytest.mark.parametrize("free_factor,expected", [(0.5, True), (2.0, False)])
def test_auto_follows_plan_against_free_memory(monkeypatch, free_factor, expected):
    cfg = config()
    assert cfg.model.gradient_checkpointing == "auto"  # the default
    need = need_without_checkpointing(cfg)
    monkeypatch.setattr(recompute, "free_memory", lambda: (int(need * free_factor), "RAM"))
    choice = recompute.choose_checkpointing(cfg, "phi3.5-mini", "bf16")
    assert choice.on is expected
    assert choice.reason.startswith("auto: plan") and "the free RAM" in choice.reason


def test_the_printed_choice_is_one_line_that_names_each_figure_once(monkeypatch):
    import torch

    from phinetune.models.plan import GiB
    from phinetune.progress import progress_console

    monkeypatch.setattr(
        torch.cuda, "is_available", lambda: False
    )  # the CPU rule (margin, no CUDA context), as computed here
    need = need_without_checkpointing(config())
    lines = {}
    for factor in (2.0, 0.5):
        monkeypatch.setattr(recompute, "free_memory", lambda: (int(need * factor), "RAM"))
        choice = recompute.choose_checkpointing(config(), "phi3.5-mini", "bf16")
        width = progress_console.width
        progress_console.width = 40  # a narrow terminal: the line must still come out whole
        try:
            with progress_console.capture() as out:
                choice.announce()
        finally:
            progress_console.width = width
        lines[choice.on] = out.get()
    est, free_off, free_on = f"{need / GiB:.1f}", f"{need * 2 / GiB:.1f}", f"{need / 2 / GiB:.1f}"
    assert (
        lines[False]
        == f"gradient checkpointing: off (auto: plan estimates ~{est} GiB without it, and {free_off} GiB of RAM is free)\n"
    )
    assert (
        lines[True]
        == f"gradient checkpointing: on (auto: plan estimates ~{est} GiB without it, more than the {free_on} GiB of RAM free)\n"
    )


@pytest.mark.parametrize("value", [True, False])
def test_explicit_setting_is_kept(monkeypatch, value):
    monkeypatch.setattr(recompute, "free_memory", lambda: (1, "RAM"))  # would force "on" under auto
    choice = recompute.choose_checkpointing(
        config(f"model.gradient_checkpointing={str(value).lower()}"), "phi3.5-mini", "bf16"
    )
    assert (
        choice.on is value and choice.reason == f"set in the config: model.gradient_checkpointing: {str(value).lower()}"
    )
    assert choice.line() == f"gradient checkpointing: {'on' if value else 'off'} ({choice.reason})"


def test_unknown_free_memory_leaves_it_off(monkeypatch):
    monkeypatch.setattr(recompute, "free_memory", lambda: (None, "memory"))
    choice = recompute.choose_checkpointing(config(), "phi3.5-mini", "bf16")
    assert choice.on is False and choice.reason.endswith("; left off, the free memory could not be read")


def test_bad_value_is_one_sentence():
    from phinetune.errors import PhinetuneError

    with pytest.raises(PhinetuneError, match="gradient_checkpointing"):
        config("model.gradient_checkpointing=sometimes")


def test_the_choice_is_recorded_in_the_run(tiny_run):
    from phinetune.runs.run_dir import RunDir

    report = json.loads(RunDir(tiny_run).preflight.read_text())
    assert re.fullmatch(
        r"off \(auto: plan estimates ~[\d.]+ GiB without it, which fits in the free (RAM|GPU memory)\)",
        report["dtype"]["gradient checkpointing"],
    )  # a tiny model fits anywhere; the free figure is not recorded
