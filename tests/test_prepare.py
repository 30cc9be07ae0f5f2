"""One preparation (train.prepare.prepare) for train, check, bench and plan --validate: `check` reports
exactly the pre-flight `train` writes, dtype and targets included, also where `auto` picks CPU bf16."""

from __future__ import annotations

import json

import pytest

from phinetune.train.check import check_config
from phinetune.train.recipe import train


def report_pair(tiny_cfg, tmp_path, *overrides):
    cfg = tiny_cfg("train.max_steps=1", "train.eval_every=1", "train.save_every=0", *overrides)
    checked = tmp_path / "check.json"
    check_config(cfg, save_to=checked)
    result = train(cfg)
    return json.loads(checked.read_text()), json.loads(result.run.preflight.read_text()), result


def test_check_report_equals_the_preflight_train_writes(tiny_cfg, tmp_path):
    from_check, from_train, _ = report_pair(tiny_cfg, tmp_path, "adapter.targets=attention")
    assert from_check == from_train
    assert from_train["dtype"]["dtype"] == "fp32" and set(from_train["matches"]) == {"qkv_proj", "o_proj"}
    assert from_train["eot_turns"][0] == from_train["eot_turns"][1] > 0


def test_check_and_train_pick_the_same_dtype_where_auto_means_cpu_bf16(tiny_cfg, tmp_path, monkeypatch):
    """The drift this fixes: check used choose_dtype (fp32 on CPU) while train used choose_train_dtype (bf16)."""
    from phinetune.train import precision

    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    monkeypatch.setattr(precision, "MIN_HIDDEN", 64)  # the tiny model is "wide enough"
    # no modules_to_save: bf16 is chosen only when every trained tensor is a LoRA adapter
    from_check, from_train, result = report_pair(tiny_cfg, tmp_path, "adapter.modules_to_save=[]")
    assert from_check["dtype"] == from_train["dtype"] and from_train["dtype"]["dtype"] == "bf16"
    assert from_check == from_train
    assert result.run.read_info().dtype == "bf16"


def test_prepare_is_what_train_check_bench_and_plan_call():
    """No second preparation path: the callers import prepare and none builds its own from the pieces."""
    import inspect

    from phinetune.bench import plan as plan_measure
    from phinetune.bench import train_child
    from phinetune.train import check, recipe

    for module in (recipe, check, plan_measure):
        source = inspect.getsource(module)
        assert "prepare(" in source and "choose_dtype(" not in source and "load_model(" not in source, module.__name__
    assert "recipe.setup(" in inspect.getsource(train_child.run_phinetune)  # bench's phinetune side is train's setup


@pytest.mark.parametrize("override", ["data.max_length=24"])
def test_check_refuses_like_train(tiny_cfg, override):
    from phinetune.errors import PreflightError

    cfg = tiny_cfg(override)
    with pytest.raises(PreflightError) as from_check:
        check_config(cfg)
    with pytest.raises(PreflightError) as from_train:
        train(cfg.model_copy(update={"output": cfg.output.model_copy(update={"overwrite": True})}))
    assert str(from_check.value) == str(from_train.value)


def test_a_merged_folder_names_its_spec_unless_model_spec_is_given(tmp_path):
    """Training from a `phinetune merge` folder needs no model.spec: its marker names the spec (config.json
    alone cannot tell Phi-3-mini-128k from Phi-3.5-mini)."""
    from phinetune.config import load_config
    from phinetune.runs.run_dir import MERGED_MARKER
    from phinetune.train.prepare import with_merged_spec

    (tmp_path / MERGED_MARKER).write_text(json.dumps({"spec": "phi3.5-mini", "merged_from": "runs/x"}))
    assert with_merged_spec(load_config(None, [f"model.name={tmp_path}"])).model.spec == "phi3.5-mini"
    assert (
        with_merged_spec(load_config(None, [f"model.name={tmp_path}", "model.spec=phi4-mini"])).model.spec
        == "phi4-mini"
    )
    (tmp_path / "plain").mkdir()
    assert with_merged_spec(load_config(None, [f"model.name={tmp_path / 'plain'}"])).model.spec is None
    assert with_merged_spec(load_config(None, ["model.name=microsoft/phi-2"])).model.spec is None


def test_a_tiny_base_under_a_relative_run_folder_is_recorded_by_its_absolute_path(tiny_cfg, tmp_path, monkeypatch):
    """PEFT writes the path the base was loaded from into the adapter's config: it must not depend on the folder training ran in."""
    from pathlib import Path

    from phinetune.train.prepare import prepare

    monkeypatch.chdir(tmp_path)
    prepared = prepare(tiny_cfg(), Path("runs/rel/base"), with_data=False)
    expected = str((tmp_path / "runs" / "rel" / "base").resolve() / "tiny-phi3-seed0")
    assert prepared.path == expected
    assert prepared.model.peft_config["default"].base_model_name_or_path == expected
