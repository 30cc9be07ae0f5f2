"""Load a run config: YAML file + dotted command-line overrides -> validated RunConfig.

Errors name the exact key (e.g. `train.learnig_rate`) and suggest the closest valid one.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from phinetune.config.explain import COMMAND_LINE, explain, origins_of
from phinetune.config.schema import RunConfig
from phinetune.errors import ConfigError


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Read `path` (or the embedded defaults when None), apply `key.sub=value` overrides, validate.

    Errors say where the bad value came from (config/explain.py): `FILE:LINE` for a key in the file,
    `command line (key=value)` for an override."""
    raw = read_yaml(Path(path)) if path else {}
    for item in overrides:
        apply_override(raw, item)
    origins = origins_of(Path(path) if path else None, overrides)
    return validate_config(raw, source=str(path) if path else "defaults", origins=origins)


def default_config_path() -> Path:
    """The config `phinetune train` runs with no arguments: LoRA on a tiny built-in model over the bundled riddles."""
    return Path(str(resources.files("phinetune.assets").joinpath("default.yaml")))


def validate_config(raw: dict, source: str = "config", origins: dict[tuple, str] | None = None) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(explain(exc, source, origins or {}, hint=_closest)) from None


def dump_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def read_yaml(
    path: Path,
    what: str = "config file",
    example: str = "configs/phi3-mini-4k-lora.yaml",
    sections: str = "model, data, adapter, train, output",
) -> dict:
    """A YAML mapping from `path`, or a ConfigError naming the file (and line) and what was expected.

    The one YAML reader of every config (run, synth, accelerate). A key given twice in one mapping is refused
    with the line of each: PyYAML keeps the later value silently. A UTF-8 byte-order mark (Windows editors
    write one) is accepted."""
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist; pass a YAML file such as {example}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "re-save the file as UTF-8"
        ) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        _refuse_duplicate_keys(node, path)
        data = (loader.construct_document(node) if node is not None else None) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections ({sections}) at the top level")
    return data


def _refuse_duplicate_keys(node, path: Path, prefix: tuple = ()) -> None:
    """Walk the composed document: the same key twice in one mapping names both lines."""
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, path, prefix)
    if not isinstance(node, yaml.MappingNode):
        return
    first: dict[str, int] = {}
    for key, value in node.value:
        name = str(key.value)
        line = key.start_mark.line + 1
        if name in first and name != "<<":  # YAML merge keys may repeat
            dotted = ".".join(prefix + (name,))
            raise ConfigError(
                f"{path}:{line}: key '{dotted}' is given twice (first at {path}:{first[name]}); "
                "YAML would keep only the later value: merge the two or delete one"
            )
        first.setdefault(name, line)
        _refuse_duplicate_keys(value, path, prefix + (name,))


def apply_override(raw: dict, item: str) -> None:
    """Set `section.key=value` in the raw mapping (the value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(
            f"{COMMAND_LINE} ({item}): an override must look like section.key=value, e.g. train.learning_rate=2e-5"
        )
    dotted, value = item.split("=", 1)
    keys = dotted.strip().split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{COMMAND_LINE} ({item}): '{key}' is not a section")
    # YAML parsing gives numbers, booleans and lists their natural types (2e-5, true, [a, b]).
    node[keys[-1]] = yaml.safe_load(value) if value.strip() else None


# Names people bring from transformers/PEFT/TRL/axolotl and other toolkits, mapped to ours (a full dotted path,
# with the value when the meaning is a value of ours): `lr=1e-3` is refused with "did you mean 'train.learning_rate'?".
ALIASES = {
    "rank": "adapter.r",
    "lora_r": "adapter.r",
    "lora_rank": "adapter.r",
    "lora_alpha": "adapter.alpha",
    "lora_dropout": "adapter.dropout",
    "target_modules": "adapter.targets",
    "lora_target_modules": "adapter.targets",
    "lr": "train.learning_rate",
    "num_train_epochs": "train.epochs",
    "num_epochs": "train.epochs",
    "per_device_train_batch_size": "train.batch_size",
    "micro_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "max_seq_length": "data.max_length",
    "max_seq_len": "data.max_length",
    "sequence_len": "data.max_length",
    "cutoff_len": "data.max_length",
    "output_dir": "output.dir",
    "lr_scheduler_type": "train.scheduler",
    "lr_scheduler": "train.scheduler",
    "optim": "train.optimizer",
    "torch_dtype": "model.dtype",
    "load_in_4bit": "model.quant=nf4",
    "bnb_4bit_quant_type": "model.quant",
    "quantization": "model.quant",
    "qlora": "model.quant=nf4",
    "eval_steps": "train.eval_every",
    "save_steps": "train.save_every",
    "logging_steps": "train.log_every",
    "model_name_or_path": "model.name",
    "base_model": "model.name",
    "dataset": "data.train",
    "dataset_name": "data.train",
    "train_file": "data.train",
    "packing": "data.packing",
}


def _field_paths() -> dict[str, list[str]]:
    """Every field name of every section -> its dotted paths (`quant` -> [model.quant])."""
    paths: dict[str, list[str]] = {}
    for section, field in RunConfig.model_fields.items():
        for name in field.annotation.model_fields:
            paths.setdefault(name, []).append(f"{section}.{name}")
    return paths


def _choices(annotation) -> set[str]:
    """The string values a field accepts: its Literal choices, through Optional/Union."""
    if typing.get_origin(annotation) is Literal:
        return {str(a) for a in typing.get_args(annotation)}
    return set().union(*(_choices(a) for a in typing.get_args(annotation))) if typing.get_args(annotation) else set()


def _as_value(key: str) -> str | None:
    """`bf16` -> `model.dtype=bf16`: a value of exactly one field given as if it were a key."""
    owners = [
        f"{section}.{name}={key.lower()}"
        for section, field in RunConfig.model_fields.items()
        for name, sub in field.annotation.model_fields.items()
        if key.lower() in _choices(sub.annotation)
    ]
    return owners[0] if len(owners) == 1 else None


def _as_dotted(key: str) -> str | None:
    """`data_max_length` or `max_lenght` -> `data.max_length`: the nearest dotted key of the whole schema."""
    paths = [p for ps in _field_paths().values() for p in ps]
    spellings = {**{p.replace(".", "_"): p for p in paths}, **{p: p for p in paths}}
    match = difflib.get_close_matches(key.lower(), list(spellings), n=1, cutoff=0.8)
    return spellings[match[0]] if match else None


def _closest(loc: tuple[Any, ...]) -> str | None:
    """Suggest the key meant: a known foreign name, our own name in another section (`adapter.quant` ->
    `model.quant`), the nearest name at the failing level, else the nearest dotted name anywhere."""
    model: type[BaseModel] = RunConfig
    prefix = []
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return None
        model = field.annotation
        prefix.append(str(part))
    key = str(loc[-1])
    if key.lower() in ALIASES:
        return ALIASES[key.lower()]
    elsewhere = _field_paths().get(key, [])
    if len(elsewhere) == 1:
        return elsewhere[0]
    # A value given as if it were a key (`bf16=true`, `train.bf16=true` as in transformers' TrainingArguments);
    # at the top level, also a dotted key with its section left out or spelled with '_' (`max_lenght`).
    hint = _as_value(key) or (_as_dotted(key) if not prefix else None)
    if hint:
        return hint
    match = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.5)
    if match:
        return ".".join(prefix + match)
    paths = [p for ps in _field_paths().values() for p in ps]
    anywhere = difflib.get_close_matches(key, [p.split(".")[1] for p in paths], n=1, cutoff=0.7)
    return next((p for p in paths if p.split(".")[1] == anywhere[0]), None) if anywhere else None
