"""ONNX Runtime GenAI export: the onnxruntime-genai model builder run on the merged folder.

The builder (`python -m onnxruntime_genai.models.builder`) is Microsoft's own path for Phi on ONNX Runtime;
phinetune only prepares its input and fixes up two facts in its output (see `build_onnx`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from phinetune.errors import PhinetuneError

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
PROVIDERS = ("cpu", "cuda")
# The builder's CPU kernels cover these; its Phi-3.5-MoE graph needs the CUDA MoE operator.
CPU_ARCHES = {"phi": "PhiForCausalLM", "phi3": "Phi3ForCausalLM"}
CUDA_ARCHES = {**CPU_ARCHES, "phimoe": "PhiMoEForCausalLM"}


def check_supported(model_type: str, provider: str) -> None:
    arches = CUDA_ARCHES if provider == "cuda" else CPU_ARCHES
    if model_type not in arches:
        extra = (
            " (its MoE operator runs on CUDA only; pass --device cuda on a GPU machine)"
            if model_type == "phimoe"
            else ""
        )
        raise PhinetuneError(
            f"the onnxruntime-genai builder does not build '{model_type}' models for {provider}{extra}; "
            f"it supports {', '.join(sorted(arches))} there"
        )


def prepare_input(model_dir: Path) -> None:
    """Make config.json say what the builder dispatches on.

    The builder picks its LongRoPE graph whenever max_position_embeddings differs from
    original_max_position_embeddings, even with no rope scaling at all (then it fails on the missing
    factors). Without longrope, transformers never reads original_max_position_embeddings, so setting it
    equal to the context changes nothing in the model and sends the builder down the plain Phi-3 path.
    """
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if config.get("model_type") == "phi3" and str(rope.get("rope_type", rope.get("type", ""))).lower() not in (
        "longrope",
        "su",
    ):
        config["original_max_position_embeddings"] = config["max_position_embeddings"]
        path.write_text(json.dumps(config, indent=2))


def build_onnx(
    model_dir: Path, out_dir: Path, precision: str, provider: str, stop_ids: list[int], cache_dir: Path | None = None
) -> Path:
    """Run the builder into `out_dir` (genai_config.json, model.onnx + data, tokenizer, chat template)."""
    if precision not in PRECISIONS:
        raise PhinetuneError(f"--precision must be one of {', '.join(PRECISIONS)} (got '{precision}')")
    if provider not in PROVIDERS:
        raise PhinetuneError(f"--device must be one of {', '.join(PROVIDERS)} (got '{provider}')")
    cmd = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(model_dir),
        "-o",
        str(out_dir),
        "-p",
        precision,
        "-e",
        provider,
        "-c",
        str(cache_dir or out_dir.parent / ".onnx-cache"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0 or not (out_dir / "genai_config.json").exists():
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PhinetuneError(
            f"the onnxruntime-genai builder failed for {model_dir} ({precision}, {provider}): {last[0]}"
        )
    _set_stop_tokens(out_dir / "genai_config.json", stop_ids)
    return out_dir


def _set_stop_tokens(path: Path, stop_ids: list[int]) -> None:
    """The builder copies config.json's single eos (Phi-3: <|endoftext|>); generation must also stop at <|end|>."""
    config = json.loads(path.read_text())
    if stop_ids:
        config["model"]["eos_token_id"] = stop_ids if len(stop_ids) > 1 else stop_ids[0]
    path.write_text(json.dumps(config, indent=4))


def greedy(model, ids: list[int], max_new_tokens: int) -> list[int]:
    """ONNX Runtime GenAI's own greedy continuation of `ids` by a loaded `og.Model` of a built folder: the new token
    ids, ending with the stop token when generation stopped at one (genai_config.json's eos_token_id)."""
    import numpy as np
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array(ids, dtype=np.int32))
    tokens = []
    while not generator.is_done():  # get_sequence() leaves the stop token out; collect each new token instead
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens
