"""`phinetune merge`, `export` and `push`: a finished run as a standalone model, another runtime's files, or a
Hub repository."""

from __future__ import annotations

from typing import Literal

import typer

from phinetune.cli.app import app
from phinetune.cli.options import LOAD, Checkpoint, DType, GgufType, GgufTypes, comma_list
from phinetune.export.onnx import PROVIDERS
from phinetune.export.targets import TARGETS
from phinetune.export.targets import describe as describe_targets

RUN_HELP = "A finished run folder from `phinetune train`."


@app.command()
def merge(
    run: str = typer.Argument(..., help="A run folder from `phinetune train`."),
    out: str = typer.Option(..., "--out", help="Folder for the merged model."),
    dtype: DType = LOAD.dtype,
    max_shard_size: str = typer.Option("2GB", help="Largest safetensors shard."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out folder."),
    checkpoint: Checkpoint = None,
    base: str | None = typer.Option(
        None,
        "--base",
        help="QLoRA runs: dequantized (default: the NF4 base weights dequantized, exactly the model that was trained) or original (the full-precision checkpoint). The logit gap between the two is printed.",
    ),
) -> None:
    """Merge a LoRA/QLoRA run into a standalone 16/32-bit model (QLoRA: into the dequantized NF4 base or the original one, --base)."""
    from phinetune.runs.targets import check_run

    check_run(run, final=checkpoint is None)
    from phinetune.export.merge import merge_run

    merge_run(run, out, dtype, max_shard_size, overwrite, base, checkpoint)


@app.command()
def export(
    run: str = typer.Argument(..., help=RUN_HELP),
    to: Literal[tuple(TARGETS)] = typer.Option(..., "--to", help=f"{describe_targets()}."),
    out: str = typer.Option(..., "--out", help="Folder to create; it must not exist yet."),
    quant: GgufTypes = "f16",
    precision: tuple = typer.Option(
        "fp32",
        parser=comma_list(example="fp32,int4"),
        metavar="PRECISIONS",
        help="ONNX precisions, comma-separated: fp32, fp16, bf16, int8, int4.",
    ),
    device: Literal[PROVIDERS] = typer.Option("cpu", help="ONNX execution provider."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out."),
    checkpoint: Checkpoint = None,
) -> None:
    """Merge the run and convert it for another runtime; DIR appears only when everything is written."""
    from phinetune.runs.targets import check_run

    check_run(run, final=checkpoint is None)
    from phinetune.export.run import ExportPlan, export_run

    export_run(run, out, ExportPlan(to, quant, precision, device, overwrite, checkpoint))


@app.command()
def push(
    run: str = typer.Argument(..., help=RUN_HELP),
    repo_id: str = typer.Argument(..., help="Hub repository, e.g. you/phi3-riddles."),
    merged: bool = typer.Option(False, "--merged", help="Upload the merged model instead of the adapter."),
    adapter: bool = typer.Option(False, "--adapter", help="Upload the PEFT adapter (the default)."),
    gguf: bool = typer.Option(False, "--gguf", help="Upload a GGUF file and an Ollama Modelfile."),
    quant: GgufType = "q8_0",
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Write the folder that would be uploaded to --out; upload nothing."
    ),
    out: str | None = typer.Option(None, "--out", help="Folder for --dry-run."),
    private: bool = typer.Option(False, help="Create the repository as private."),
    local_base: bool = typer.Option(
        False,
        "--local-base",
        help="Upload an adapter whose base is a local model (it loads only where that folder exists); refused without this.",
    ),
) -> None:
    """Upload to the Hugging Face Hub with a generated model card (needs a token: `hf auth login` or HF_TOKEN)."""
    from phinetune.errors import PhinetuneError
    from phinetune.runs.targets import check_run

    check_run(run, None, use_checkpoint=None)  # push uploads final weights only
    if merged + adapter + gguf > 1:
        raise PhinetuneError("choose one of --adapter, --merged and --gguf")
    from phinetune.export.hub import push as run_push

    run_push(
        run,
        repo_id,
        "merged" if merged else "gguf" if gguf else "adapter",
        dry_run,
        out,
        quant,
        private,
        local_base=local_base,
    )
