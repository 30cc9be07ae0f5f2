"""`phinetune check`: everything a training run does before its first step (load, data, adapter,
pre-flight), then stop. No run folder is created; tiny models are built once into the shared cache."""

from __future__ import annotations

from pathlib import Path

from phinetune.config import RunConfig
from phinetune.data.dataset import prepare_data
from phinetune.models.loading import choose_dtype, load_model, load_tokenizer, resolve_model_path
from phinetune.models.turns import end_of_turn
from phinetune.models.specs import get_spec
from phinetune.progress import console
from phinetune.train.adapter import apply_adapter
from phinetune.train.preflight import PreflightReport, run_preflight


def check_config(cfg: RunConfig, save_to: Path | None = None) -> PreflightReport:
    """The same steps, in the same order, as train.recipe.setup up to the pre-flight; raises on problems."""
    spec = get_spec(cfg.model.name, cfg.model.spec)
    dtype = choose_dtype(cfg.model.dtype, spec)
    with console.status(f"Loading {cfg.model.name} ({dtype.name}{', nf4' if cfg.model.quant == 'nf4' else ''})"):
        path = resolve_model_path(cfg.model, seed=cfg.train.seed)
        tokenizer = load_tokenizer(path, cfg.model, spec)
        model = load_model(path, cfg.model, spec, tokenizer, dtype)
    data = prepare_data(cfg.data, tokenizer, end_of_turn(tokenizer, spec, cfg.model.end_of_turn), spec)
    model = apply_adapter(model, spec, cfg.adapter, cfg.model, tokenizer, cfg.preflight)
    return run_preflight(cfg, spec, model, tokenizer, data, dtype, verbose=True, save_to=save_to)
