"""`phinetune train`, `check` and `launch-template`: a run config in; a run, its pre-flight or a cluster
script out."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from phinetune.cli.app import app
from phinetune.cli.options import ConfigArgs, ConfigOption, resolve_config, split_args, with_config_option
from phinetune.errors import PhinetuneError
from phinetune.train.distributed.cluster import TEMPLATES

Scheduler = Literal[tuple(TEMPLATES)]


@app.command()
def train(
    args: ConfigArgs = None,
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in output.dir from its latest checkpoint (also automatic when it holds the same config).",
    ),
    nproc: int = typer.Option(
        1, "--nproc", min=1, help="Processes to train on (GPUs; on CPU, DDP over gloo) through accelerate / torchrun."
    ),
    accelerate_config: Path | None = typer.Option(
        None,
        "--accelerate-config",
        help="accelerate config for FSDP/DeepSpeed, e.g. configs/accelerate/fsdp.yaml (FSDP2; the one that also runs on CPU).",
    ),
    nnodes: int = typer.Option(
        1,
        "--nnodes",
        min=1,
        help="Nodes in the job: run this same command on each, with its --node-rank (docs/scale-and-resume.md; launch-template writes SLURM/Kubernetes scripts).",
    ),
    node_rank: int = typer.Option(
        0, "--node-rank", min=0, help="This node's index, 0 to --nnodes - 1; node 0 hosts the rendezvous."
    ),
    rdzv_endpoint: str | None = typer.Option(
        None, "--rdzv-endpoint", help="HOST:PORT of node 0 for torchrun's c10d rendezvous (needed with --nnodes > 1)."
    ),
    rdzv_id: str = typer.Option(
        "phinetune", "--rdzv-id", help="Rendezvous id, the same on every node of one job (SLURM: $SLURM_JOB_ID)."
    ),
    config: ConfigOption = None,
) -> None:
    """Fine-tune a model. With no arguments: LoRA on a tiny built-in Phi-3-architecture model over the 64 bundled riddles,
    then a recall check (CPU, no network, about 15-20 s on an idle 2-core machine)."""
    from phinetune.runs.targets import TRAIN_FROM_RUN, check_source

    args = with_config_option(args, config)
    cfg = resolve_config(args)  # validated once here, so a typo fails before N processes start
    check_source(cfg.model.name, cfg.model.revision, run_advice=TRAIN_FROM_RUN)
    if nproc > 1 or accelerate_config is not None or nnodes > 1:
        from phinetune.train.distributed.launch import launch, nodes_from_options

        nodes = nodes_from_options(nnodes, node_rank, rdzv_endpoint, rdzv_id)
        raise typer.Exit(launch(nproc, args + (["--resume"] if resume else []), accelerate_config, nodes))
    from phinetune.eval.checkpoints import training_hooks
    from phinetune.train.recipe import train as run_train
    from phinetune.train.summary import print_summary

    print_summary(run_train(cfg, resume=resume, hooks=training_hooks(cfg)), cfg.train.objective)


@app.command()
def check(
    args: ConfigArgs = None,
    save: Path | None = typer.Option(None, "--save", help="Also write the report as JSON here."),
    config: ConfigOption = None,
) -> None:
    """Load, read the data and attach the adapter exactly as `train` would, print the pre-flight, and stop.

    Exits non-zero when the pre-flight finds a problem (the `preflight.*` overrides apply)."""
    from phinetune.runs.targets import TRAIN_FROM_RUN, check_source

    cfg = resolve_config(with_config_option(args, config))
    check_source(cfg.model.name, cfg.model.revision, run_advice=TRAIN_FROM_RUN)
    from phinetune.train.check import check_config

    check_config(cfg, save)


@app.command("launch-template")
def launch_template(
    kind: Scheduler = typer.Argument(
        ..., help="slurm (an sbatch script: srun + torchrun) or k8s (a Kubeflow PyTorchJob manifest)."
    ),
    args: ConfigArgs = None,
    nodes: int = typer.Option(2, "--nodes", min=1, help="Nodes in the job."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes per node (its GPUs)."),
    accelerate_config: str | None = typer.Option(
        None,
        "--accelerate-config",
        help="accelerate config every node passes to train, e.g. configs/accelerate/fsdp.yaml.",
    ),
    gpus_per_node: int | None = typer.Option(
        None, "--gpus-per-node", min=0, help="GPUs to request per node (default: --nproc; 0: a CPU job)."
    ),
    job_name: str = typer.Option(
        "phinetune", "--job-name", help="Job name (and k8s rendezvous id): lower-case letters, digits, '-'."
    ),
    port: int = typer.Option(29500, "--port", help="Rendezvous port on node 0."),
    partition: str | None = typer.Option(None, "--partition", help="SLURM partition."),
    image: str = typer.Option("phinetune:latest", "--image", help="k8s: container image with phinetune installed."),
    shared_dir: str = typer.Option(
        "/runs", "--shared-dir", help="k8s: mount path of the shared volume; output.dir must be under it."
    ),
    pvc: str = typer.Option(
        "phinetune-runs", "--pvc", help="k8s: ReadWriteMany PersistentVolumeClaim holding the run folders."
    ),
    nccl_socket_ifname: str | None = typer.Option(
        None, "--nccl-socket-ifname", help="NCCL_SOCKET_IFNAME for the nodes' network (e.g. ib0)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write the script here (default: print it)."),
    config_option: ConfigOption = None,
) -> None:
    """Write the launch script of an N-node training job for SLURM or Kubernetes (docs/scale-and-resume.md)."""
    from phinetune.train.distributed.cluster import ClusterJob, write_script

    args = with_config_option(args, config_option)
    config, overrides = split_args(args)
    if config is None:  # the embedded default is a tiny CPU model: a GPU job of N nodes for it is never what was meant
        raise PhinetuneError(
            f"launch-template {kind} needs the run config every node trains, e.g. "
            f"phinetune launch-template {kind} configs/phi3.5-mini-qlora.yaml --nodes {nodes}"
        )
    cfg = resolve_config(args)  # a typo fails here, not on N nodes
    job = ClusterJob(
        config,
        tuple(overrides),
        nodes,
        nproc,
        str(cfg.output.dir),
        accelerate_config,
        job_name,
        port,
        image,
        shared_dir,
        pvc,
        partition,
        gpus_per_node=gpus_per_node,
        nccl_socket_ifname=nccl_socket_ifname,
    )
    write_script(kind, job, out)
