"""ONNX Runtime GenAI export, proven by onnxruntime-genai: same next-token logits, same answer, same stop.

Tolerances (max |next-token logit difference| on three chat prompts, PyTorch fp32 merged model as
reference): fp32 1e-3 (float rounding), int4 1.5 (4-bit weights, the builder's default RTN, block 32).
Greedy answers match PyTorch token for token in fp32 and still contain the trained answer in int4;
generation stops at the end-of-turn token in both.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from phinetune.errors import PhinetuneError
from phinetune.export.onnx import check_supported, greedy, prepare_input
from phinetune.export.run import ExportPlan, export_run
from test_export_gguf import RIDDLES, Reference

TOLERANCE = {"fp32": 1e-3, "int4": 1.5}


@pytest.fixture(scope="module")
def onnx_export(memorized_run, tmp_path_factory):
    og = pytest.importorskip(
        "onnxruntime_genai", reason="onnxruntime-genai is not installed (pip install 'phinetune[export]')"
    )
    pytest.importorskip(
        "onnx_ir", reason="onnx-ir (the builder's dependency) is not installed (pip install 'phinetune[export]')"
    )
    root = tmp_path_factory.mktemp("onnx")
    run = memorized_run("tiny-phi3")
    out = export_run(str(run), str(root / "onnx"), ExportPlan(to="onnx", precisions=("fp32", "int4")))
    from phinetune.export.merge import merge_run

    ref = Reference(merge_run(str(run), str(root / "merged"), dtype="fp32"))
    return og, out, ref


def last_logits(og, model, ids: list[int]) -> np.ndarray:
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array(ids, dtype=np.int32))
    return gen.get_logits().reshape(-1)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_onnxruntime_genai_agrees_with_pytorch(onnx_export, precision):
    og, out, ref = onnx_export
    folder = out / f"cpu-{precision}"
    config = json.loads((folder / "genai_config.json").read_text())
    assert config["model"]["eos_token_id"] == ref.stop_ids, "generation must stop at <|end|> too"
    model = og.Model(str(folder))
    worst, recalled = 0.0, 0
    for prompt, answer in zip(ref.prompts, ref.answers):
        ids = ref.ids(prompt)
        worst = max(worst, float(np.abs(last_logits(og, model, ids) - ref.logits(ids)[-1]).max()))
        tokens = greedy(model, ids, 48)
        assert tokens[-1] in ref.stop_ids, f"{precision}: generation did not stop at the end-of-turn token"
        if precision == "fp32":
            assert tokens == ref.greedy(ids)
        recalled += answer in ref.tokenizer.decode(tokens, skip_special_tokens=True)
    print(f"PARITY onnx tiny-phi3 {precision} max|dlogit|={worst:.4g}")
    assert worst <= TOLERANCE[precision], f"{precision}: max |logit diff| {worst:.4g}"
    assert recalled >= RIDDLES - 1


def test_moe_on_cpu_is_refused_in_one_sentence():
    with pytest.raises(PhinetuneError, match="MoE operator runs on CUDA only"):
        check_supported("phimoe", "cpu")
    check_supported("phimoe", "cuda")
    check_supported("phi", "cpu")


def test_prepare_input_only_touches_non_longrope_phi3(tmp_path):
    plain = {
        "model_type": "phi3",
        "max_position_embeddings": 1024,
        "original_max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default"},
    }
    longrope = {**plain, "rope_parameters": {"rope_type": "longrope", "long_factor": [1.0], "short_factor": [1.0]}}
    for name, config in [("plain", plain), ("long", longrope)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        prepare_input(tmp_path / name)
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["original_max_position_embeddings"] == 1024
    assert json.loads((tmp_path / "long" / "config.json").read_text())["original_max_position_embeddings"] == 4096
