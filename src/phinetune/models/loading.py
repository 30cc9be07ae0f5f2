"""Load a base model and tokenizer: a Hub id, a local folder, or a built-in tiny model.

One code path for all of them (tiny models are saved to a folder first), so QLoRA, dtypes and the
Phi-2 token additions are exercised by the tests exactly as they run on real models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel

from phinetune.config.schema import ModelConfig
from phinetune.errors import ConfigError, PhinetuneError
from phinetune.kernels.attention import implementation
from phinetune.kernels.norm import fuse_norms
from phinetune.models.hub import builtin_hint, check_model_name, download_advice
from phinetune.models.load_options import DTYPE_NAMES, dtype_name
from phinetune.models.pad import fix_pad
from phinetune.models.specs import TINY_MODELS, ModelSpec
from phinetune.models.templates import read_template
from phinetune.paths import cache_root

PAD_TOKEN = "<PAD>"  # what pad_policy="add" adds
DTYPES = dict(zip(DTYPE_NAMES, (torch.bfloat16, torch.float16, torch.float32)))


@dataclass
class DtypePlan:
    dtype: torch.dtype
    name: str
    reason: str


def choose_dtype(requested: str, spec: ModelSpec) -> DtypePlan:
    """Resolve `auto` for the hardware and refuse dtypes the spec knows to be unsafe (Phi-2 fp16 -> NaN)."""
    requested = dtype_name(requested)
    if requested in spec.refused_dtypes:
        raise ConfigError(f"model.dtype={requested} is refused for {spec.key}: {spec.refused_dtypes[requested]}")
    if requested != "auto":
        return DtypePlan(DTYPES[requested], requested, "requested in the config")
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return DtypePlan(torch.bfloat16, "bf16", "CUDA GPU with bf16 support")
        if "fp16" not in spec.refused_dtypes:
            return DtypePlan(torch.float16, "fp16", "CUDA GPU without bf16")
        return DtypePlan(
            torch.float32,
            "fp32",
            f"GPU without bf16, and fp16 is refused for {spec.key}: {spec.refused_dtypes['fp16']}",
        )
    return DtypePlan(torch.float32, "fp32", "no GPU: fp32 on CPU")


def materialize_tiny(name: str, seed: int = 0, folder: Path | None = None) -> Path:
    """The one place a built-in tiny base is built: saved once as a Hugging Face folder, then reused.

    Into `folder` when given (training passes RUN/base, so a run needs nothing outside itself), else into the
    shared cache (check, generate/serve on a tiny name, the synth teacher), built once for all of them.
    """
    from phinetune.models.tiny import save_tiny

    out = (folder if folder is not None else cache_root() / "tiny") / f"{name}-seed{seed}"
    if not (out / "config.json").exists():
        save_tiny(name, out, seed)
    return out


def resolve_model_path(cfg: ModelConfig, base_dir: Path | None = None, seed: int = 0) -> str:
    """Tiny names become a local checkpoint (in `base_dir`, else the cache); everything else is passed through.

    The tiny checkpoint's path is absolute: PEFT records the path a model was loaded from in the adapter's config,
    which must name the same base as run.json wherever the run is used from, not a path relative to where it was trained."""
    if cfg.name in TINY_MODELS:
        return str(materialize_tiny(cfg.name, seed, base_dir).resolve())
    return cfg.name


def load_tokenizer(path: str, cfg: ModelConfig, spec: ModelSpec):
    tokenizer = _hub_call(
        path,
        cfg.revision,
        lambda: AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code),
    )
    new = [t for t in spec.added_tokens if t not in tokenizer.get_vocab() and t != PAD_TOKEN]
    if new:
        tokenizer.add_special_tokens({"additional_special_tokens": new})
    if spec.template and not tokenizer.chat_template:
        tokenizer.chat_template = read_template(spec.template)
    if spec.pad_policy == "add":  # a dedicated pad token (Phi-2: its eos is also its only separator)
        if tokenizer.pad_token != PAD_TOKEN:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    elif tokenizer.pad_token is None:  # "existing": the tokenizer's own pad, else its eos
        tokenizer.pad_token = tokenizer.eos_token  # safe: labels come from masks, never from pad ids
    # Pad is never the end of turn (models/pad.py); the end of turn as the model layer knows it (data/end_of_turn.py
    # reads unknown templates, and the pre-flight refuses a pad that still equals it).
    fix_pad(tokenizer, spec, cfg.end_of_turn or spec.end_of_turn or tokenizer.eos_token)
    return tokenizer


def load_model(
    path: str, cfg: ModelConfig, spec: ModelSpec, tokenizer, dtype: DtypePlan, device_map=None
) -> PreTrainedModel:
    kwargs = dict(
        revision=cfg.revision,
        dtype=dtype.dtype,
        attn_implementation=implementation(cfg.attn_implementation),
        trust_remote_code=cfg.trust_remote_code,
    )
    if cfg.quant == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype.dtype,
            # FSDP flattens each wrapped layer into one tensor of one dtype: 4-bit packed weights must then be
            # stored in the compute dtype (QLoRA + FSDP). accelerate launch sets ACCELERATE_USE_FSDP.
            bnb_4bit_quant_storage=dtype.dtype
            if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")
            else torch.uint8,
        )
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = _hub_call(path, cfg.revision, lambda: AutoModelForCausalLM.from_pretrained(path, **kwargs))
    resize_for_tokenizer(model, tokenizer, spec)
    fuse_norms(model)  # one autograd function per RMSNorm on CPU (kernels/norm.py)
    return model


def resize_for_tokenizer(model: PreTrainedModel, tokenizer, spec: ModelSpec) -> None:
    """Grow the embedding when tokens were added (Phi-2 ChatML), padded to a multiple for speed."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(
            len(tokenizer), pad_to_multiple_of=spec.resize_multiple or None, mean_resizing=True
        )
    model.config.pad_token_id = tokenizer.pad_token_id


def _hub_call(name: str, revision: str | None, fn):
    check_model_name(
        name, revision
    )  # a path-like name or an unreachable Hub: one sentence now, not after 50 s of retries
    try:
        return fn()
    except OSError as exc:
        offline = (
            os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(exc).lower() or "connect" in str(exc).lower()
        )
        hint = (
            (
                "it is not in the local Hugging Face cache and the Hub cannot be reached; "
                f"{download_advice(name)}, or set model.name to a local folder"
            )
            if offline
            else str(exc).splitlines()[0]
        )
        raise PhinetuneError(f"could not load model '{name}': {hint} ({builtin_hint(name)})") from None
