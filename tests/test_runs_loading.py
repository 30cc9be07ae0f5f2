"""runs/loading.py base_and_tuned: a LoRA run is loaded once (base = adapter off), a full fine-tune twice, one at a time."""

from __future__ import annotations

import gc
import weakref

import torch

from phinetune.runs import loading
from phinetune.runs.folders import open_run
from phinetune.runs.loading import base_and_tuned, load_for_inference


def _logits(loaded, text="What has keys?"):
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return loaded.model(ids).logits


def test_lora_run_loads_once_and_its_base_is_the_adapter_switched_off(tiny_run, monkeypatch):
    calls = []
    real = loading._load_run
    monkeypatch.setattr(loading, "_load_run", lambda *a, **k: calls.append(a) or real(*a, **k))
    seen = {}
    for label, loaded in base_and_tuned(open_run(tiny_run), "fp32"):
        seen[label] = (_logits(loaded), id(loaded))
    assert list(seen) == ["base", "tuned"] and len(calls) == 1 and seen["base"][1] == seen["tuned"][1]
    assert torch.allclose(seen["base"][0], _logits(load_for_inference(str(tiny_run), "fp32", adapter=False)))
    assert torch.allclose(seen["tuned"][0], _logits(load_for_inference(str(tiny_run), "fp32")))
    assert not torch.allclose(seen["base"][0], seen["tuned"][0])


class _FullRun:
    is_full = True
    path = "full-run"


class _Model:
    pass


def test_full_run_loads_base_then_tuned_and_frees_the_first(monkeypatch):
    made, alive_at_second = [], []

    def fake_load(run, dtype, quant, adapter):
        if made:
            gc.collect()
            alive_at_second.append(made[0]() is not None)
        obj = _Model()
        obj.adapter = adapter
        made.append(weakref.ref(obj))
        return obj

    monkeypatch.setattr(loading, "_load_run", fake_load)
    monkeypatch.setattr(loading, "require_final_weights", lambda run, **kw: None)  # a stand-in run: no files to check
    order = []
    for label, model in base_and_tuned(_FullRun()):
        order.append((label, model.adapter))
        del model
    assert order == [("base", False), ("tuned", True)] and alive_at_second == [False]
