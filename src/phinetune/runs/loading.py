"""Load something to run: a run folder (base + adapter), a merged folder, or a base model id; and a run's
base and tuned models for before/after comparisons (`base_and_tuned`, used by compare, eval and the report)."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel

from phinetune.config.schema import ModelConfig
from phinetune.data.end_of_turn import stop_token_ids
from phinetune.errors import ConfigError, PhinetuneError
from phinetune.models.load_options import QUANTS, dtype_name
from phinetune.models.loading import choose_dtype, load_model, load_tokenizer, materialize_tiny
from phinetune.models.specs import TINY_MODELS, ModelSpec, get_spec, spec_from_config
from phinetune.progress import progress_console, verbose
from phinetune.runs.checkpoints import pick_checkpoint
from phinetune.runs.folders import RUN, classify, model_problem, what
from phinetune.runs.run_dir import ADAPTER_CONFIG, CHECKPOINT_WEIGHTS, RunDir, merged_spec_key
from phinetune.runs.status import require_final_weights


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object
    spec: ModelSpec
    stop_ids: list[int]
    source: str


def device_map():
    """Inference runs on the first GPU when there is one (without this, weights would stay on the CPU)."""
    return {"": 0} if torch.cuda.is_available() else None


def is_run_dir(path: str) -> bool:
    return classify(path).kind == RUN


def load_for_inference(
    target: str, dtype: str = "auto", quant: str = "none", adapter: bool = True, checkpoint: str | None = None
) -> Loaded:
    """`adapter=False` on a run folder gives the base model alone (for before/after comparisons).

    `checkpoint` ('last', 'best', 'step-N' or 'N') takes a run's trainable weights from that training checkpoint
    instead of its final adapter: the way to use a run that was interrupted before it finished.
    A local folder that holds no model (a run's adapter/ or checkpoint, an empty folder) is refused with one
    sentence saying what it is and what to pass (runs/folders.py), before any library tries to load it."""
    dtype = dtype_name(dtype)  # bfloat16, half, float32 ...: the names a user types; a typo lists the choices
    if quant not in QUANTS:
        raise ConfigError(f"quant '{quant}' is not one of {', '.join(QUANTS)}")
    folder = classify(target) if Path(target).expanduser().exists() else None
    if checkpoint is not None and (folder is None or folder.kind != RUN):
        where = what(folder) if folder is not None else f"{target} is not a folder"
        raise PhinetuneError(f"--checkpoint needs a run folder from `phinetune train`; {where}")
    problem = model_problem(folder) if folder is not None else None
    if problem:
        raise PhinetuneError(problem)
    with progress_console.status(f"Loading {target}"):
        if folder is not None and folder.kind == RUN:
            run = RunDir(folder.path)
            return _load_run(run, dtype, quant, adapter, pick_checkpoint(run, checkpoint) if adapter else None)
        return _load_plain(target, dtype, quant)


def _load_run(run: RunDir, dtype: str, quant: str, adapter: bool, checkpoint: Path | None = None) -> Loaded:
    info, cfg = run.read_info(), run.read_config()
    spec = get_spec(cfg.model.name, cfg.model.spec)
    mcfg = cfg.model.model_copy(update={"quant": quant, "dtype": dtype})
    plan = choose_dtype(dtype, spec)
    tokenizer = load_tokenizer(str(run.tokenizer), mcfg, spec)
    if checkpoint is not None:
        model = load_model(info.base_model, mcfg, spec, tokenizer, plan, device_map())
        model = apply_checkpoint(model, checkpoint)
    elif run.is_full and adapter:
        model = load_model(str(run.full_model), mcfg, spec, tokenizer, plan, device_map())
    else:
        model = load_model(info.base_model, mcfg, spec, tokenizer, plan, device_map())
        if adapter:
            model = PeftModel.from_pretrained(model, str(run.adapter))
    model.eval()
    return Loaded(model, tokenizer, spec, stop_token_ids(tokenizer, spec), str(run.path))


def apply_checkpoint(model, checkpoint: Path):
    """Rebuild the run's adapter from the config the checkpoint carries, then load its trainable weights.

    A checkpoint holds only what was trained (train/checkpoint.py), under the names of the trained model,
    so every saved tensor must land on a parameter: an unexpected name means another run's checkpoint.
    A full fine-tune's checkpoint carries no adapter config: its weights load into the base itself."""
    from peft import PeftConfig, get_peft_model
    from safetensors.torch import load_file

    if (checkpoint / ADAPTER_CONFIG).exists():
        with warnings.catch_warnings():
            if not verbose():
                # The checkpoint's config names the base path training loaded (relative to where it ran, or a folder
                # since moved), and the run's base is attached here on purpose: PEFT's warning that the path "was
                # renamed" leaves a user nothing to do. Kept under --verbose.
                warnings.filterwarnings(
                    "ignore", message=r"The PEFT config's `base_model_name_or_path` was renamed", category=UserWarning
                )
            model = get_peft_model(model, PeftConfig.from_pretrained(str(checkpoint)))
    saved = load_file(str(checkpoint / CHECKPOINT_WEIGHTS), device=str(_device(model)))
    unexpected = model.load_state_dict(saved, strict=False).unexpected_keys
    if unexpected:
        raise PhinetuneError(
            f"{checkpoint} holds weights this run's model does not have (e.g. {unexpected[0]}); it belongs to another run"
        )
    return model


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _load_plain(target: str, dtype: str, quant: str) -> Loaded:
    spec = _plain_spec(Path(target)) if Path(target).exists() else get_spec(target)
    if target in TINY_MODELS and not Path(target).exists():
        # A built-in tiny name has no Hub repo: build it once into a local cache folder, as training does.
        target = str(materialize_tiny(target))
    mcfg = ModelConfig(name=target, dtype=dtype, quant=quant)
    tokenizer = load_tokenizer(target, mcfg, spec)
    model = load_model(target, mcfg, spec, tokenizer, choose_dtype(dtype, spec), device_map())
    model.eval()
    return Loaded(model, tokenizer, spec, stop_token_ids(tokenizer, spec), target)


def _plain_spec(folder: Path) -> ModelSpec:
    """A merged folder records its spec (MERGED_MARKER); otherwise guess from config.json."""
    import json

    key = merged_spec_key(folder)
    if key is not None:
        return get_spec("", key)
    config_file = folder / "config.json"
    return spec_from_config(json.loads(config_file.read_text())) if config_file.exists() else get_spec(str(folder))


def base_and_tuned(run: RunDir, dtype: str = "auto", quant: str = "none") -> Iterator[tuple[str, Loaded]]:
    """Yield ("base", model) then ("tuned", model) for the same run; use each before asking for the next.

    A LoRA/QLoRA run is loaded once: the base is the same weights with the adapter switched off (PEFT
    `disable_adapter`, which also bypasses modules_to_save), so no second copy of the base is in memory.
    A full fine-tune has two different weight sets: they are loaded one at a time, the first freed before
    the second is loaded. An unfinished or damaged run is refused before anything loads.
    """
    require_final_weights(run, use_checkpoint=None)
    if run.is_full:
        with progress_console.status(f"Loading the base of {run.path}"):
            base = _load_run(run, dtype, quant, adapter=False)
        yield "base", base
        del base
        gc.collect()
        with progress_console.status(f"Loading {run.path}"):
            tuned = _load_run(run, dtype, quant, adapter=True)
        yield "tuned", tuned
        return
    with progress_console.status(f"Loading {run.path}"):
        loaded = _load_run(run, dtype, quant, adapter=True)
    with loaded.model.disable_adapter():
        yield "base", loaded
    yield "tuned", loaded
