"""export/targets.py: the one table of export targets, behind `export --to`, docs/export.md and every runtime check.

Every registered target is exported from a trained tiny run and run in its own runtime; its greedy answers must be
PyTorch's, token for token, stop token included. A new target needs its lossless settings in LOSSLESS below.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from phinetune.export.targets import TARGETS, ExportPlan, describe, get_target

ROOT = Path(__file__).resolve().parents[1]
# The settings under which a target's runtime must agree with PyTorch exactly (no quantization).
LOSSLESS = {
    "gguf": ExportPlan("gguf", quants=("f32",)),
    "ollama": ExportPlan("ollama", quants=("f32",)),
    "onnx": ExportPlan("onnx", precisions=("fp32",)),
}


def docs_table() -> list[tuple[str, str]]:
    """(`--to` value, runtime) rows of docs/export.md's table of targets."""
    text = (ROOT / "docs" / "export.md").read_text()
    return re.findall(r"^\| `([a-z0-9][a-z0-9_-]*)` \| ([^|]+?) \|", text, flags=re.M)


def test_docs_list_every_registered_target_and_no_other():
    assert docs_table() == [(t.name, t.runtime) for t in TARGETS.values()]


def test_export_takes_its_choices_from_the_registry():
    from typer.testing import CliRunner

    from phinetune.cli import app
    from phinetune.errors import PhinetuneError

    assert describe() == "gguf (llama.cpp), ollama (Ollama) or onnx (ONNX Runtime GenAI)"
    shown = " ".join(CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "300"}).output.split())
    assert describe() in shown
    with pytest.raises(PhinetuneError, match=r"^--to must be one of gguf, ollama, onnx \(got 'tflite'\)$"):
        get_target("tflite")
    assert set(LOSSLESS) == set(TARGETS), "give a new target its lossless settings in LOSSLESS"


@pytest.fixture(scope="module")
def reference(memorized_run, tmp_path_factory):
    """The run merged in fp32 by PyTorch: prompt ids of three trained riddles and its greedy answers to them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phinetune.export.merge import merge_run

    merged = merge_run(
        str(memorized_run("tiny-phi3")), str(tmp_path_factory.mktemp("targets") / "merged"), dtype="fp32"
    )
    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    stops = json.loads((merged / "generation_config.json").read_text())["eos_token_id"]
    rows = [
        json.loads(line)
        for line in (ROOT / "src" / "phinetune" / "assets" / "riddles.jsonl").read_text().splitlines()[:3]
    ]
    prompts = [
        tokenizer.apply_chat_template(r["messages"][:1], add_generation_prompt=True, tokenize=False) for r in rows
    ]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    with torch.no_grad():
        answers = [
            model.generate(
                torch.tensor([i]), max_new_tokens=48, do_sample=False, eos_token_id=stops, pad_token_id=stops[0]
            )[0, len(i) :].tolist()
            for i in ids
        ]
    return ids, answers, stops


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TARGETS))
def test_every_target_answers_in_its_own_runtime_as_pytorch_does(name, reference, memorized_run, tmp_path):
    from phinetune.export.run import export_run

    ids, answers, stops = reference
    out = export_run(str(memorized_run("tiny-phi3")), str(tmp_path / name), LOSSLESS[name])
    for prompt, expected in zip(ids, answers):
        found = TARGETS[name].verify(out, prompt, 48)
        assert found and all(tokens == expected for tokens in found.values()), (found, expected)
        assert expected[-1] in stops  # the trained answer ends at the end-of-turn token, in every runtime
