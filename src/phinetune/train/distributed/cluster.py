"""`phinetune launch-template slurm|k8s`: the launch script of an N-node training job, rendered from a template.

One way to launch on a cluster: every node runs the same `phinetune train CONFIG --nproc G --nnodes N
--node-rank R --rdzv-endpoint HOST:PORT` (train/distributed/launch.py), and the scheduler only has to start it once per
node with R set. The templates (cluster_templates/) say how each scheduler does that:

- SLURM: an sbatch script; `srun` starts one task per node, R is `$SLURM_NODEID`, node 0 is the first host of
  `$SLURM_JOB_NODELIST`, the rendezvous id is `$SLURM_JOB_ID`.
- Kubernetes: a Kubeflow PyTorchJob (one Master pod, N-1 Workers); the operator sets `RANK`, `MASTER_ADDR`
  and `MASTER_PORT` in each pod; the run folder is on a ReadWriteMany volume every pod mounts.

The training command itself (config, overrides, --nproc, --accelerate-config) is built here once, shell-quoted,
and placed in either template, so the two cannot drift apart.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from phinetune.errors import PhinetuneError

TEMPLATES = {"slurm": "slurm.sbatch.jinja", "k8s": "pytorchjob.yaml.jinja"}
SUFFIX = {"slurm": ".sbatch", "k8s": ".yaml"}


@dataclass(frozen=True)
class ClusterJob:
    """What a launch template needs: the job's shape and the training command every node runs."""

    config: str | None  # the run config's path as the nodes see it (None: the embedded default)
    overrides: tuple[str, ...] = ()
    nodes: int = 2
    nproc: int = 1  # processes per node (GPUs per node)
    run_dir: str = "runs/default"  # output.dir of the config: must be on storage every node sees
    accelerate_config: str | None = None
    job_name: str = "phinetune"
    port: int = 29500
    image: str = "phinetune:latest"  # k8s: an image with phinetune, torch and the config
    shared_dir: str = "/runs"  # k8s: where the shared volume is mounted
    pvc: str = "phinetune-runs"  # k8s: the ReadWriteMany claim holding the run folders
    partition: str | None = None  # SLURM
    time: str = "24:00:00"  # SLURM
    cpus_per_task: int = 8  # SLURM
    gpus_per_node: int | None = None  # default: nproc (0: a CPU job, no GPU request)
    nccl_socket_ifname: str | None = None

    def train_command(self) -> str:
        args = [
            "phinetune",
            "train",
            *([self.config] if self.config else []),
            *self.overrides,
            "--nproc",
            str(self.nproc),
        ]
        if self.accelerate_config:
            args += ["--accelerate-config", self.accelerate_config]
        return shlex.join(args)


def render(kind: str, job: ClusterJob, out_name: str = "") -> str:
    """The script for scheduler `kind` ('slurm' or 'k8s')."""
    import jinja2

    if kind not in TEMPLATES:
        raise PhinetuneError(f"launch-template {kind!r} is unknown; choose one of {', '.join(TEMPLATES)}")
    if job.nodes < 1 or job.nproc < 1:
        raise PhinetuneError(
            f"launch-template needs --nodes and --nproc of at least 1 (got {job.nodes} and {job.nproc})"
        )
    if not job.job_name.replace("-", "").isalnum() or job.job_name != job.job_name.lower():
        raise PhinetuneError(
            f"--job-name {job.job_name!r}: expected lower-case letters, digits and '-' (a Kubernetes name)"
        )
    if kind == "k8s" and not PurePosixPath(job.run_dir).is_relative_to(job.shared_dir):
        raise PhinetuneError(
            f"output.dir {job.run_dir} is not under the shared volume --shared-dir {job.shared_dir}: every pod must see "
            f"the run folder; set output.dir={job.shared_dir}/NAME"
        )
    source = (
        resources.files("phinetune.train.distributed")
        .joinpath("cluster_templates", TEMPLATES[kind])
        .read_text(encoding="utf-8")
    )
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    gpus = job.nproc if job.gpus_per_node is None else job.gpus_per_node
    roles = [("Master", 1)] + ([("Worker", job.nodes - 1)] if job.nodes > 1 else [])
    return env.from_string(source).render(
        nodes=job.nodes,
        nproc=job.nproc,
        job_name=job.job_name,
        port=job.port,
        run_dir=shlex.quote(job.run_dir),
        train_command=job.train_command(),
        image=job.image,
        shared_dir=job.shared_dir,
        pvc=job.pvc,
        partition=job.partition,
        time=job.time,
        cpus_per_task=job.cpus_per_task,
        gpus_per_node=gpus,
        nccl_socket_ifname=job.nccl_socket_ifname,
        roles=roles,
        out_name=out_name or f"{job.job_name}{SUFFIX[kind]}",
    )


def write_script(kind: str, job: ClusterJob, out: Path | None = None) -> str:
    """`phinetune launch-template`: the script written to `out`, or to stdout when there is none."""
    import sys

    from phinetune.progress import console

    text = render(kind, job, out.name if out else "")
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        console.print(f"wrote {out}", highlight=False)
    return text
