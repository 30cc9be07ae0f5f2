"""`model.dtype: auto` picks bf16 on CPU only for wide LoRA models on CPUs with bf16 units."""

from __future__ import annotations

import json

import torch

from phinetune.config import load_config
from phinetune.models.specs import get_spec
from phinetune.train import precision


def _cfg(*overrides):
    return load_config(None, ["model.name=x", *overrides])


def _model_dir(tmp_path, hidden):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": hidden}))
    return str(tmp_path)


def test_bf16_for_wide_lora_on_bf16_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = get_spec("microsoft/Phi-3-mini-4k-instruct")
    plan = precision.choose_train_dtype(_cfg(), spec, _model_dir(tmp_path, 3072))
    assert plan.dtype == torch.bfloat16


def test_fp32_when_unsafe_or_not_worth_it(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = get_spec("microsoft/Phi-3-mini-4k-instruct")
    wide, narrow = _model_dir(tmp_path, 3072), None
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    assert precision.choose_train_dtype(_cfg("adapter.modules_to_save=[lm_head]"), spec, wide).dtype == torch.float32
    assert precision.choose_train_dtype(_cfg("adapter.method=full"), spec, wide).dtype == torch.float32
    assert precision.choose_train_dtype(_cfg("model.dtype=fp32"), spec, wide).dtype == torch.float32
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 128}))
    assert precision.choose_train_dtype(_cfg(), spec, wide).dtype == torch.float32
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 3072}))
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    plan = precision.choose_train_dtype(_cfg(), spec, wide)
    assert plan.dtype == torch.float32 and "avx512_bf16" in plan.reason
