"""Load a run config: YAML file + dotted command-line overrides -> validated RunConfig.

Errors name the exact key (e.g. `train.learnig_rate`) and suggest the closest valid one.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from pydantic import BaseModel, ValidationError

from phinetune.config.schema import RunConfig
from phinetune.errors import ConfigError


def load_config(path: Optional[str | Path] = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Read `path` (or the embedded defaults when None), apply `key.sub=value` overrides, validate."""
    raw = read_yaml(Path(path)) if path else {}
    for item in overrides:
        apply_override(raw, item)
    return validate_config(raw, source=str(path) if path else "defaults")


def validate_config(raw: dict, source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None


def dump_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def read_yaml(path: Path, what: str = "config file", example: str = "configs/phi3-mini-4k-lora.yaml",
              sections: str = "model, data, adapter, train, output") -> dict:
    """A YAML mapping from `path`, or a ConfigError naming the file (and line) and what was expected."""
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist; pass a YAML file such as {example}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections ({sections}) at the top level")
    return data


def apply_override(raw: dict, item: str) -> None:
    """Set `section.key=value` in the raw mapping (the value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value, e.g. train.learning_rate=2e-5")
    dotted, value = item.split("=", 1)
    keys = dotted.strip().split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{item}': '{key}' is not a section")
    # YAML parsing gives numbers, booleans and lists their natural types (2e-5, true, [a, b]).
    node[keys[-1]] = yaml.safe_load(value) if value.strip() else None


def _explain(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            hint = _closest(err["loc"])
            lines.append(f"{source}: unknown key '{loc}'" + (f"; did you mean '{hint}'?" if hint else ""))
        elif loc:
            lines.append(f"{source}: '{loc}': {err['msg']} (got {err.get('input')!r})")
        else:
            lines.append(f"{source}: {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


# Names people bring from transformers/PEFT/TRL and other toolkits, mapped to ours.
ALIASES = {
    "rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "targets",
    "lr": "learning_rate", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "max_seq_length": "max_length", "output_dir": "dir",
    "lr_scheduler_type": "scheduler", "optim": "optimizer", "torch_dtype": "dtype", "load_in_4bit": "quant",
    "eval_steps": "eval_every", "save_steps": "save_every", "logging_steps": "log_every",
}


def _closest(loc: tuple[Any, ...]) -> Optional[str]:
    """Walk the schema along `loc` and suggest the nearest valid key at the failing level."""
    model: type[BaseModel] = RunConfig
    prefix = []
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return None
        model = field.annotation
        prefix.append(str(part))
    alias = ALIASES.get(str(loc[-1]))
    if alias in model.model_fields:
        return ".".join(prefix + [alias])
    match = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.5)
    return ".".join(prefix + match) if match else None
