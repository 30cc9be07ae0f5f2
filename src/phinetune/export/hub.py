"""`phinetune push RUN REPO_ID`: the adapter, the merged model or a GGUF, with a generated model card.

The folder to upload is assembled first (in a staging folder renamed into place, like every export);
`--dry-run --out DIR` stops there, so the card can be read before anything leaves the machine. The card
is rendered from templates/model_card.md.jinja with the same pre-flight and eval tables as the report.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from phinetune.errors import PhinetuneError
from phinetune.export.run import check_run, merged_folder
from phinetune.export.targets import TARGETS, ExportPlan, gguf_name, ollama_name
from phinetune.models.hub import snapshot_repo
from phinetune.progress import console, escape
from phinetune.runs.run_dir import ADAPTER_CONFIG, RunDir

MODES = ("adapter", "merged", "gguf")
CARD = "README.md"  # the Hub shows a repository's README.md as its model card
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # owner/name


def push(
    run_path: str,
    repo_id: str,
    mode: str = "adapter",
    dry_run: bool = False,
    out: str | None = None,
    quant: str = "q8_0",
    private: bool = False,
    token: str | None = None,
    local_base: bool = False,
) -> Path:
    """`local_base`: upload an adapter whose base is a local model all the same (refused without it: see check_base)."""
    if mode not in MODES:
        raise PhinetuneError(f"push mode must be one of {', '.join(MODES)} (got '{mode}')")
    run, spec = check_run(run_path, use_checkpoint=None)  # push uploads final weights only
    if mode == "adapter" and run.is_full:
        raise PhinetuneError(f"{run.path} is a full fine-tune with no adapter; push it with --merged")
    if dry_run:
        if out is None:
            raise PhinetuneError("--dry-run needs --out DIR: the folder that would be uploaded is written there")
        if Path(out).exists():
            raise PhinetuneError(f"push output {out} already exists; choose another --out")
    if mode == "adapter":
        check_base(run, dry_run or local_base)
    if not dry_run:
        token = token or _token()
        _check_reachable(run, repo_id)  # before the folder is built (a merge or GGUF takes a while): fail in seconds
    parent = Path(out).parent if dry_run else Path(tempfile.mkdtemp(prefix="phinetune-push-"))
    staging = parent / f".push.partial-{os.getpid()}"
    try:
        folder = build_folder(run, spec, repo_id, mode, quant, staging)
        if dry_run:
            folder.rename(out)
            console.print(
                f"dry run: the folder that would be uploaded to {repo_id} is {out} (card: {Path(out) / CARD})"
            )
            return Path(out)
        _upload(folder, repo_id, private, token)
        console.print(f"pushed {mode} of {run.path} to https://huggingface.co/{repo_id}")
        return folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not dry_run:
            shutil.rmtree(parent, ignore_errors=True)


def hub_base(base_model: str) -> str | None:
    """The Hub id a run's base came from (the id itself, or the repository of a Hugging Face cache snapshot folder),
    or None for a local model (a built-in tiny base, a merged or other folder): an adapter on it loads nowhere else."""
    snapshot = snapshot_repo(base_model)
    if snapshot:
        return snapshot
    if Path(base_model).exists() or base_model.startswith((".", "/", "~")) or not HUB_ID.fullmatch(base_model):
        return None
    return base_model


def check_base(run: RunDir, allowed: bool) -> None:
    """An adapter is only half a model: uploaded on a local base, nobody else can load it. Refused unless allowed
    (--local-base); a dry run is allowed, so the folder can be looked at, and says the same as a warning.

    Refused rather than warned on a real push: the upload is public by default and every download of it would fail
    on a path that exists only here; --merged uploads standalone weights instead."""
    base = run.read_info().base_model
    if hub_base(base) is not None:
        return
    problem = (
        f"the adapter's base is the local model {base}, so the uploaded adapter would load only where that folder exists; "
        "push --merged to upload standalone weights"
    )
    if not allowed:
        raise PhinetuneError(f"{problem}, or pass --local-base to upload the adapter anyway (nothing was uploaded)")
    console.print(f"[bold yellow]warning:[/bold yellow] {escape(problem)}", markup=True)


def _token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PhinetuneError(
            "pushing to the Hub needs a token and none is set: run `hf auth login` or set HF_TOKEN "
            "(nothing was uploaded; --dry-run --out DIR shows what would be)"
        )
    return token


OFFLINE = "cannot push while HF_HUB_OFFLINE=1 is set; unset it to upload (nothing was uploaded)"


def _check_reachable(run: RunDir, repo_id: str) -> None:
    """One short probe of the Hub (models/hub.py: a refused connection answers at once, a silent network in
    PROBE_TIMEOUT seconds), so a push without network is one sentence instead of a connection traceback."""
    from phinetune.models.hub import endpoint, hub_reachable, offline_env

    if offline_env():
        raise PhinetuneError(OFFLINE)
    if not hub_reachable():
        raise PhinetuneError(
            f"cannot reach the Hugging Face Hub at {endpoint()} to push to {repo_id}: nothing was uploaded "
            f"and {run.path} is unchanged; run the same command again once the network is back "
            "(--dry-run --out DIR writes the folder that would be uploaded meanwhile)"
        )


def _transport_errors() -> tuple[type, ...]:
    """The HTTP client's connection errors (refused, reset, timed out): huggingface_hub 1.x calls httpx, 2.x its
    successor httpx2, with the same class names; neither is an OSError or an HfHubHTTPError."""
    import importlib

    found = []
    for name in ("httpx", "httpx2"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _upload(folder: Path, repo_id: str, private: bool, token: str) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    from phinetune.models.hub import endpoint

    api = HfApi(token=token, endpoint=endpoint())
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload with phinetune push")
    except OfflineModeIsEnabled:
        raise PhinetuneError(OFFLINE) from None
    except (HfHubHTTPError, OSError, *_transport_errors()) as exc:
        raise PhinetuneError(
            f"upload to {repo_id} failed ({endpoint()}): {str(exc).splitlines()[0] or type(exc).__name__}; "
            "the run folder is unchanged: run the same command again to retry"
        ) from None


def build_folder(run: RunDir, spec, repo_id: str, mode: str, quant: str, dest: Path) -> Path:
    """The repository's files: weights of the chosen kind, tokenizer, README.md (the card), loss.png."""
    shutil.rmtree(dest, ignore_errors=True)
    gguf_files: list[str] = []
    if mode == "adapter":
        shutil.copytree(run.adapter, dest)
        for item in run.tokenizer.iterdir():
            shutil.copy2(item, dest / item.name)
        # the base as anyone downloading it can load it: the Hub id, or (a local base) the path run.json records
        base = run.read_info().base_model
        config = json.loads((dest / ADAPTER_CONFIG).read_text())
        config["base_model_name_or_path"] = hub_base(base) or base
        (dest / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    elif mode == "merged":
        merged_folder(run, dest)
    else:
        work = dest.parent / f"{dest.name}-merged"
        try:
            model_dir = merged_folder(run, work)
            dest.mkdir(parents=True)
            TARGETS["ollama"].write(model_dir, dest, run.path.name, spec, ExportPlan(to="ollama", quants=(quant,)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        gguf_files = [gguf_name(run.path.name, quant)]
    has_plot = run.plot.exists()
    if has_plot:
        shutil.copy2(run.plot, dest / run.plot.name)
    (dest / CARD).write_text(model_card(run, spec, repo_id, mode, gguf_files, has_plot))
    return dest


def model_card(run: RunDir, spec, repo_id: str, mode: str, gguf_files: list[str], has_plot: bool) -> str:
    from jinja2 import Environment, StrictUndefined

    from phinetune.models.templates import read_template
    from phinetune.report.page import eval_section, preflight_section

    info, cfg = run.read_info(), run.read_config()
    metrics = run.read_metrics()
    evals = [m["eval_loss"] for m in metrics if m.get("eval_loss") is not None]
    steps = max((m.get("step", 0) for m in metrics), default=0)
    preflight, evaluated = preflight_section(run), eval_section(run)
    tokenizer_dir = run.tokenizer
    vocab = (
        json.loads((tokenizer_dir / "tokenizer.json").read_text()).get("added_tokens", [])
        if (tokenizer_dir / "tokenizer.json").exists()
        else []
    )
    stop_ids = [t["id"] for t in vocab if t["content"] in spec.stop_tokens]
    hub_id = hub_base(info.base_model)
    contents = {
        "adapter": "PEFT LoRA adapter",
        "merged": "merged model (safetensors)",
        "gguf": f"GGUF file for llama.cpp and Ollama ({', '.join(gguf_files)})",
    }[mode]
    flag = {"adapter": "--adapter", "merged": "--merged", "gguf": "--gguf"}[mode]
    template = read_template("model_card.md.jinja")
    env = Environment(undefined=StrictUndefined, keep_trailing_newline=True)
    return env.from_string(template).render(
        repo_id=repo_id,
        base_model=hub_id or info.base_model,
        base_is_hub=hub_id is not None,
        spec_key=spec.key,
        model_type=spec.model_type,
        method=info.method,
        quant=info.quant,
        data=cfg.data.train,
        steps=steps,
        eval_loss=(f"{evals[0]:.4f} at the start -> {evals[-1]:.4f} at the end" if evals else "not measured"),
        end_of_turn=spec.end_of_turn,
        config_yaml=run.config.read_text().rstrip(),
        preflight=preflight.md if preflight else "_No pre-flight report in the run folder._",
        eval_table=evaluated.md
        if evaluated
        else f"_Not evaluated yet: `phinetune eval {run.path.name}` writes this table._",
        has_plot=has_plot,
        library="peft" if mode == "adapter" else ("gguf" if mode == "gguf" else "transformers"),
        extra_tags=["lora"] if mode == "adapter" else (["gguf"] if mode == "gguf" else []),
        contents=contents,
        run_name=run.path.name,
        gguf_files=gguf_files,
        gguf_stem=run.path.name,
        ollama_name=ollama_name(run.path.name),
        stop_ids=stop_ids,
        command=f"phinetune push {run.path.name} {repo_id} {flag}",
        command_merged=f"phinetune push {run.path.name} {repo_id} --merged",
    )
