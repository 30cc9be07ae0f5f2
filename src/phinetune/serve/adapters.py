"""Many LoRA adapters on one base: `phinetune serve RUN_A RUN_B ...` loads the base once, each run's adapter
into the same PeftModel (PEFT's load_adapter), and serves each under its own model id, plus the base itself.

A request picks its model by id; the worker switches the active adapter between batches (set_adapter, or
disable_adapter for the base), so memory grows by each adapter's weights, not by another copy of the base.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from peft import PeftModel

from phinetune.errors import PhinetuneError
from phinetune.runs.folders import open_run
from phinetune.runs.loading import Loaded, is_run_dir, load_for_inference
from phinetune.runs.run_dir import RunDir


@dataclass
class Served:
    loaded: Loaded
    models: dict[str, str | None]  # model id clients send -> PEFT adapter name (None: the model without adapters)
    memory: list[str] = field(default_factory=list)  # what loading each adapter cost, for the startup banner

    @property
    def default(self) -> str:
        return next(iter(self.models))

    @classmethod
    def single(cls, loaded: Loaded, name: str) -> Served:
        """One loaded model under one id (a run's adapter stays on; the base is not offered)."""
        return cls(loaded, {name: loaded.model.active_adapter if isinstance(loaded.model, PeftModel) else None})


def tensor_bytes(model) -> int:
    """Bytes held by the model's parameters and buffers, each storage counted once (shared base weights too)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = (t.device, t.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def default_model_name(target: str) -> str:
    """The id clients pass as `model`: a folder's name, or the model id itself."""
    path = Path(target)
    return path.resolve().name if path.exists() else target


def load_served(
    targets: list[str],
    dtype: str = "auto",
    quant: str = "none",
    first_name: str | None = None,
    checkpoint: str | None = None,
) -> Served:
    """One model for all targets: a single base/merged/run target, or several LoRA runs on the same base.
    `checkpoint` (step-N, best, last) serves that checkpoint of a single run folder."""
    if not targets:
        raise PhinetuneError("serve needs at least one run folder, merged folder or model id")
    names = [first_name or default_model_name(targets[0])] + [default_model_name(t) for t in targets[1:]]
    if len(set(names)) != len(names):
        raise PhinetuneError(
            f"two targets would be served under the same model id ({', '.join(names)}); "
            "rename a run folder or serve them separately"
        )
    if len(targets) > 1:
        for t in targets:
            if not is_run_dir(t) or open_run(t).is_full:
                raise PhinetuneError(
                    f"{t}: serving several targets needs LoRA run folders (with adapter/) on one base; "
                    "serve a merged folder or full fine-tune on its own"
                )
    if checkpoint is not None and len(targets) > 1:
        raise PhinetuneError("--checkpoint applies to one run folder; serve several runs with their final adapters")
    loaded = load_for_inference(targets[0], dtype, quant, checkpoint=checkpoint)
    if not isinstance(loaded.model, PeftModel):
        return Served(loaded, {names[0]: None})
    base_model = open_run(targets[0]).read_info().base_model
    models: dict[str, str | None] = {names[0]: loaded.model.active_adapter}
    total = tensor_bytes(loaded.model)
    memory = [f"base + adapter '{names[0]}': {_mib(total)}"]
    for i, (target, name) in enumerate(zip(targets[1:], names[1:]), start=1):
        models[name] = _add_adapter(loaded, open_run(target), base_model, f"adapter{i}")
        grown, total = tensor_bytes(loaded.model) - total, tensor_bytes(loaded.model)
        memory.append(f"+ adapter '{name}': +{_mib(grown)} (total {_mib(total)})")
    models[_base_name(base_model, models)] = None
    return Served(loaded, models, memory)


def _add_adapter(loaded: Loaded, run: RunDir, base_model: str, adapter_name: str) -> str:
    info = run.read_info()
    if not same_base(info.base_model, base_model):
        raise PhinetuneError(
            f"{run.path}: trained on {info.base_model}, not on {base_model} like the first run; "
            "only runs on the same base can share it"
        )
    tokenizer = _tokenizer(run)
    if (
        tokenizer.get_vocab() != loaded.tokenizer.get_vocab()
        or tokenizer.chat_template != loaded.tokenizer.chat_template
    ):
        raise PhinetuneError(
            f"{run.path}: its tokenizer or chat template differs from the first run's; serve it separately"
        )
    loaded.model.load_adapter(str(run.adapter), adapter_name=adapter_name)
    return adapter_name


def same_base(a: str, b: str) -> bool:
    """The same id, or two local folders holding byte-identical config and weights (tiny bases are built into
    each run's own folder, so two runs on one base may name two copies of it)."""
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    if not (pa.is_dir() and pb.is_dir()):
        return False

    def listing(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.suffix in (".json", ".safetensors"))

    files = listing(pa)
    if files != listing(pb) or "config.json" not in files:
        return False
    weights = [f for f in files if f.endswith(".safetensors")]
    return (pa / "config.json").read_bytes() == (pb / "config.json").read_bytes() and all(
        (pa / f).stat().st_size == (pb / f).stat().st_size and _digest(pa / f) == _digest(pb / f) for f in weights
    )


def _digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _tokenizer(run: RunDir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(run.tokenizer))


def _base_name(base_model: str, models: dict) -> str:
    name = default_model_name(base_model)
    return name if name not in models else f"{name}-base"


@contextmanager
def use_adapter(model, name: str | None):
    """Run `model` with adapter `name` active, or with none (the base) for None."""
    if not isinstance(model, PeftModel):
        with nullcontext():
            yield
        return
    if name is None:
        with model.disable_adapter():
            yield
        return
    if model.active_adapter != name:
        model.set_adapter(name)
    yield
