"""The `phinetune` command. Each verb is a thin wrapper over a library function of the same stage."""

from __future__ import annotations

import atexit
import gc
import os
import sys
from importlib import resources
from pathlib import Path
from typing import List, Optional

import typer

from phinetune.errors import PhinetuneError
from phinetune.export.targets import describe as export_targets
from phinetune.progress import console, escape, no_hub_kernels, silence_libraries

# rich_markup_mode=None: help text is shown as written. Rich markup would read `phinetune[eval]` or
# `[CONFIG]` as style tags and drop them.
app = typer.Typer(help="Fine-tune Microsoft Phi models (LoRA, QLoRA, full) with no silent misconfiguration.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.callback()
def _global_options(verbose: bool = typer.Option(False, "--verbose", help="Show library warnings, logs and weight-loading bars (silenced by default).")) -> None:
    """Options for every verb (main() reads --verbose before any library is imported)."""

CONFIG_HELP = "A YAML run config (see configs/), followed by any number of dotted overrides like train.learning_rate=2e-5."


def split_args(args: Optional[List[str]]) -> tuple[Optional[str], list[str]]:
    """`[CONFIG] [key=value ...]`: the config is the one argument without '='."""
    args = list(args or [])
    config = args.pop(0) if args and "=" not in args[0] else None
    return config, args


CONFIG_OPTION_HELP = "The YAML config, named as other toolkits do (the same as giving it first, positionally)."


def with_config_option(args: Optional[List[str]], config: Optional[str]) -> list[str]:
    """`--config x.yaml` puts the config where it is read positionally: first, before the overrides."""
    args = list(args or [])
    if config is None:
        return args
    given, _ = split_args(args)
    if given is not None:
        raise PhinetuneError(f"two configs given, {given} and --config {config}; pass one")
    return [config, *args]


def default_config_path() -> Path:
    return Path(str(resources.files("phinetune.assets").joinpath("default.yaml")))


def resolve_config(args: Optional[List[str]]):
    from phinetune.config import load_config

    config, overrides = split_args(args)
    return load_config(config or default_config_path(), overrides)


def check_source(target: str, revision: Optional[str] = None, checkpoint: Optional[str] = None, run_advice: Optional[str] = None,
                 tokenizer_only: bool = False) -> None:
    """A TARGET or model.name that is a missing path or an unreachable, uncached Hub id fails here, in seconds,
    before torch and transformers are imported; so does a folder that holds no model (runs/folders.py), and a run
    whose final weights cannot be loaded (unfinished, damaged: runs/status.py) unless a `checkpoint` of it is asked for.
    `run_advice`: for a verb that cannot take a run folder, what to pass instead (a run folder is then refused);
    `tokenizer_only`: the verb reads only a tokenizer, which a folder of tokenizer files holds."""
    from phinetune.models.hub import check_model_name

    check_model_name(target, revision)
    if not Path(target).expanduser().exists():
        return
    from phinetune.runs.folders import IN_A_RUN, RUN, classify, require_model, what
    from phinetune.runs.run_dir import RunDir
    from phinetune.runs.status import require_final_weights

    folder = classify(target)
    if run_advice is not None and folder.run is not None and folder.kind in (RUN, *IN_A_RUN):
        raise PhinetuneError(f"{what(folder)}, not a model; {run_advice.format(base=_trained_from(RunDir(folder.run)))}")
    require_model(target, tokenizer_only=tokenizer_only)
    if folder.kind == RUN and checkpoint is None:
        require_final_weights(RunDir(folder.path))


def _trained_from(run) -> str:
    """The base model a run was trained from, as run.json (else its config.yaml) names it."""
    try:
        return run.read_info().base_model
    except PhinetuneError:
        pass
    try:
        return run.read_config().model.name
    except (PhinetuneError, OSError):
        return "(model.name in its config.yaml)"


def final_weights_named(run: str) -> bool:
    """Whether `last` names a run's final weights (runs/checkpoints.select): a finished run's, or saved ones; an
    unfinished run's `last` is its newest checkpoint."""
    from phinetune.runs.run_dir import RunDir
    from phinetune.runs.status import run_status

    return RunDir(Path(run)).has_final_weights or run_status(RunDir(Path(run))).state == "finished"


def check_run(run: str, checkpoint_flag: Optional[str] = "--checkpoint", final: bool = True,
              use_checkpoint: Optional[str] = "pass --checkpoint last to use its last checkpoint ({name})", instead: Optional[str] = None) -> None:
    """RUN must be a run folder (anything else: one sentence saying what it is and what to pass, runs/folders.py);
    `final`: this command loads the run's final weights, so an unfinished or damaged run is refused here, offering
    `use_checkpoint` (how this command takes the last checkpoint; None: it cannot) when there is one."""
    from phinetune.runs.folders import require_run
    from phinetune.runs.run_dir import RunDir
    from phinetune.runs.status import require_final_weights

    folder = require_run(run, checkpoint_flag)
    if final:
        require_final_weights(RunDir(folder.path), use_checkpoint, instead)


# model.name naming a run folder: training starts from weights, which a run holds only as an adapter on its base
TRAIN_FROM_RUN = ("model.name takes a model to train: to go on from this run, merge it (phinetune merge RUN --out DIR) and set "
                  "model.name=DIR, or resume it with its own config; to train its base again, set model.name={base}")

CHECKPOINT_HELP = ("For a run folder: 'last' (or step-N) uses that training checkpoint instead of the final adapter, e.g. of an interrupted run; "
                   "'best' the checkpoint train.keep scored best (lowest eval loss, else its first task).")


@app.command()
def train(args: Optional[List[str]] = typer.Argument(None, help=CONFIG_HELP, show_default=False),
          resume: bool = typer.Option(False, "--resume", help="Continue the run in output.dir from its latest checkpoint (also automatic when it holds the same config)."),
          nproc: int = typer.Option(1, "--nproc", min=1, help="Processes to train on (GPUs; on CPU, DDP over gloo) through accelerate / torchrun."),
          accelerate_config: Optional[Path] = typer.Option(None, "--accelerate-config", help="accelerate config for FSDP/DeepSpeed, e.g. configs/accelerate/fsdp.yaml (FSDP2; the one that also runs on CPU)."),
          nnodes: int = typer.Option(1, "--nnodes", min=1, help="Nodes in the job: run this same command on each, with its --node-rank (docs/scale-and-resume.md; launch-template writes SLURM/Kubernetes scripts)."),
          node_rank: int = typer.Option(0, "--node-rank", min=0, help="This node's index, 0 to --nnodes - 1; node 0 hosts the rendezvous."),
          rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint", help="HOST:PORT of node 0 for torchrun's c10d rendezvous (needed with --nnodes > 1)."),
          rdzv_id: str = typer.Option("phinetune", "--rdzv-id", help="Rendezvous id, the same on every node of one job (SLURM: $SLURM_JOB_ID)."),
          config: Optional[str] = typer.Option(None, "--config", help=CONFIG_OPTION_HELP)) -> None:
    """Fine-tune a model. With no arguments: LoRA on a tiny built-in Phi-3-architecture model over the 64 bundled riddles,
    then a recall check (CPU, no network, about 15-20 s on an idle 2-core machine)."""
    args = with_config_option(args, config)
    cfg = resolve_config(args)  # validated once here, so a typo fails before N processes start
    check_source(cfg.model.name, cfg.model.revision, run_advice=TRAIN_FROM_RUN)
    from phinetune.train.recipe import train as run_train

    if nproc > 1 or accelerate_config is not None or nnodes > 1:
        from phinetune.train.distributed.launch import launch, nodes_from_options

        nodes = nodes_from_options(nnodes, node_rank, rdzv_endpoint, rdzv_id)
        raise typer.Exit(launch(nproc, list(args or []) + (["--resume"] if resume else []), accelerate_config, nodes))
    from phinetune.eval.checkpoints import training_hooks

    result = run_train(cfg, resume=resume, hooks=training_hooks(cfg))
    if result.first_eval_loss is not None:
        name = {"grpo": "eval reward"}.get(cfg.train.objective, "eval loss")
        console.print(f"{name}: {result.first_eval_loss:.4f} at step 0 -> {result.final_eval_loss:.4f} after {result.steps} steps")
    console.print(f"run folder: {result.run.path}  (next: phinetune generate {result.run.path} \"...\", phinetune merge {result.run.path} --out DIR)")



@app.command("launch-template")
def launch_template(kind: str = typer.Argument(..., help="slurm (an sbatch script: srun + torchrun) or k8s (a Kubeflow PyTorchJob manifest)."),
                    args: Optional[List[str]] = typer.Argument(None, help=CONFIG_HELP, show_default=False),
                    nodes: int = typer.Option(2, "--nodes", min=1, help="Nodes in the job."),
                    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes per node (its GPUs)."),
                    accelerate_config: Optional[str] = typer.Option(None, "--accelerate-config", help="accelerate config every node passes to train, e.g. configs/accelerate/fsdp.yaml."),
                    gpus_per_node: Optional[int] = typer.Option(None, "--gpus-per-node", min=0, help="GPUs to request per node (default: --nproc; 0: a CPU job)."),
                    job_name: str = typer.Option("phinetune", "--job-name", help="Job name (and k8s rendezvous id): lower-case letters, digits, '-'."),
                    port: int = typer.Option(29500, "--port", help="Rendezvous port on node 0."),
                    partition: Optional[str] = typer.Option(None, "--partition", help="SLURM partition."),
                    image: str = typer.Option("phinetune:latest", "--image", help="k8s: container image with phinetune installed."),
                    shared_dir: str = typer.Option("/runs", "--shared-dir", help="k8s: mount path of the shared volume; output.dir must be under it."),
                    pvc: str = typer.Option("phinetune-runs", "--pvc", help="k8s: ReadWriteMany PersistentVolumeClaim holding the run folders."),
                    nccl_socket_ifname: Optional[str] = typer.Option(None, "--nccl-socket-ifname", help="NCCL_SOCKET_IFNAME for the nodes' network (e.g. ib0)."),
                    out: Optional[Path] = typer.Option(None, "--out", help="Write the script here (default: print it)."),
                    config_option: Optional[str] = typer.Option(None, "--config", help=CONFIG_OPTION_HELP)) -> None:
    """Write the launch script of an N-node training job for SLURM or Kubernetes (docs/scale-and-resume.md)."""
    from phinetune.train.distributed.cluster import ClusterJob, render

    args = with_config_option(args, config_option)
    config, overrides = split_args(args)
    if config is None:  # the embedded default is a tiny CPU model: a GPU job of N nodes for it is never what was meant
        raise PhinetuneError(f"launch-template {kind} needs the run config every node trains, e.g. "
                             f"phinetune launch-template {kind} configs/phi3.5-mini-qlora.yaml --nodes {nodes}")
    cfg = resolve_config(args)  # a typo fails here, not on N nodes
    job = ClusterJob(config, tuple(overrides), nodes, nproc, str(cfg.output.dir), accelerate_config, job_name, port, image, shared_dir, pvc,
                     partition, gpus_per_node=gpus_per_node, nccl_socket_ifname=nccl_socket_ifname)
    text = render(kind, job, out.name if out else "")
    if out is None:
        sys.stdout.write(text)
        return
    out.write_text(text)
    console.print(f"wrote {out}", highlight=False)

@app.command()
def merge(run: str = typer.Argument(..., help="A run folder from `phinetune train`."),
          out: str = typer.Option(..., "--out", help="Folder for the merged model."),
          dtype: str = typer.Option("auto", help="Weights dtype of the merged model: auto, bf16, fp16 or fp32."),
          max_shard_size: str = typer.Option("2GB", help="Largest safetensors shard."),
          overwrite: bool = typer.Option(False, help="Replace a non-empty --out folder."),
          checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help=CHECKPOINT_HELP),
          base: Optional[str] = typer.Option(None, "--base", help="QLoRA runs: dequantized (default: the NF4 base weights dequantized, exactly the model that was trained) or original (the full-precision checkpoint). The logit gap between the two is printed.")) -> None:
    """Merge a LoRA/QLoRA run into a standalone 16/32-bit model (QLoRA: into the dequantized NF4 base or the original one, --base)."""
    check_run(run, final=checkpoint is None)
    from phinetune.export.merge import merge_run

    merge_run(run, out, dtype, max_shard_size, overwrite, base, checkpoint)


@app.command()
def export(run: str = typer.Argument(..., help="A finished run folder from `phinetune train`."),
           to: str = typer.Option(..., "--to", help=f"{export_targets()}."),
           out: str = typer.Option(..., "--out", help="Folder to create; it must not exist yet."),
           quant: str = typer.Option("f16", help="GGUF types, comma-separated: f16, bf16, q8_0, q4_0, f32 (ollama: one)."),
           precision: str = typer.Option("fp32", help="ONNX precisions, comma-separated: fp32, fp16, bf16, int8, int4."),
           device: str = typer.Option("cpu", help="ONNX execution provider: cpu or cuda."),
           overwrite: bool = typer.Option(False, help="Replace an existing --out."),
           checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help=CHECKPOINT_HELP)) -> None:
    """Merge the run and convert it for another runtime; DIR appears only when everything is written."""
    check_run(run, final=checkpoint is None)
    from phinetune.export.run import ExportPlan, export_run

    split = lambda s: tuple(p.strip() for p in s.split(",") if p.strip())  # noqa: E731
    export_run(run, out, ExportPlan(to, split(quant), split(precision), device, overwrite, checkpoint))


@app.command()
def push(run: str = typer.Argument(..., help="A finished run folder from `phinetune train`."),
         repo_id: str = typer.Argument(..., help="Hub repository, e.g. you/phi3-riddles."),
         merged: bool = typer.Option(False, "--merged", help="Upload the merged model instead of the adapter."),
         adapter: bool = typer.Option(False, "--adapter", help="Upload the PEFT adapter (the default)."),
         gguf: bool = typer.Option(False, "--gguf", help="Upload a GGUF file and an Ollama Modelfile."),
         quant: str = typer.Option("q8_0", help="GGUF type for --gguf."),
         dry_run: bool = typer.Option(False, "--dry-run", help="Write the folder that would be uploaded to --out; upload nothing."),
         out: Optional[str] = typer.Option(None, "--out", help="Folder for --dry-run."),
         private: bool = typer.Option(False, help="Create the repository as private."),
         local_base: bool = typer.Option(False, "--local-base", help="Upload an adapter whose base is a local model (it loads only where that folder exists); refused without this.")) -> None:
    """Upload to the Hugging Face Hub with a generated model card (needs a token: `hf auth login` or HF_TOKEN)."""
    check_run(run, None, use_checkpoint=None)  # push uploads final weights only
    from phinetune.export.hub import push as run_push

    if merged + adapter + gguf > 1:
        raise PhinetuneError("choose one of --adapter, --merged and --gguf")
    run_push(run, repo_id, "merged" if merged else "gguf" if gguf else "adapter", dry_run, out, quant, private, local_base=local_base)


@app.command()
def generate(target: str = typer.Argument(..., help="A run folder, a merged folder, or a base model id."),
             prompt: Optional[str] = typer.Argument(None, help="One prompt (omit when using --input)."),
             input: Optional[Path] = typer.Option(None, "--input", help="JSONL of prompts: {\"prompt\": ...} or {\"messages\": [...]} per line."),
             output: Optional[Path] = typer.Option(None, "--output", help="Write answers as JSONL here."),
             max_new_tokens: int = typer.Option(256, help="Most tokens to generate."),
             temperature: float = typer.Option(0.0, help="0 = greedy."),
             top_k: int = typer.Option(0, help="Top-k sampling (0 = off)."),
             top_p: float = typer.Option(1.0, help="Nucleus sampling."),
             seed: Optional[int] = typer.Option(None, help="Sampling seed."),
             batch_size: int = typer.Option(8, help="Prompts per generation batch."),
             dtype: str = typer.Option("auto", help="auto, bf16, fp16 or fp32."),
             quant: str = typer.Option("none", help="none or nf4."),
             checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help=CHECKPOINT_HELP),
             reasoning: str = typer.Option("show", help="A reply's <think>...</think> trace: show, or hide (final answer only).")) -> None:
    """Answer one prompt, or a JSONL file of prompts, with the model's chat template."""
    check_source(target, checkpoint=checkpoint)
    from phinetune.infer.complete import Sampling
    from phinetune.infer.generate import run_generate
    from phinetune.runs.loading import LoadOptions

    sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed)  # validated before the slow load
    run_generate(target, prompt, input, output, sampling, batch_size, LoadOptions(dtype, quant), checkpoint, reasoning)


@app.command()
def chat(target: str = typer.Argument(..., help="A run folder, a merged folder, or a base model id."),
         system: Optional[str] = typer.Option(None, help="Optional system prompt."),
         max_new_tokens: int = typer.Option(256), temperature: float = typer.Option(0.7), top_p: float = typer.Option(0.95),
         dtype: str = typer.Option("auto"), quant: str = typer.Option("none"),
         checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help=CHECKPOINT_HELP),
         reasoning: str = typer.Option("show", help="A reply's <think>...</think> trace: show, or hide (final answer only).")) -> None:
    """Chat interactively; tokens stream as they are generated."""
    check_source(target, checkpoint=checkpoint)
    from phinetune.infer.chat import chat_loop
    from phinetune.infer.complete import Sampling
    from phinetune.runs.loading import load_for_inference

    if reasoning not in ("show", "hide"):
        raise PhinetuneError(f"--reasoning must be show or hide (got {reasoning})")
    sampling = Sampling(max_new_tokens, temperature, 0, top_p)  # validated before the slow load
    chat_loop(load_for_inference(target, dtype, quant, checkpoint=checkpoint), sampling, system, reasoning=reasoning)


@app.command("eval")
def eval_run(run: str = typer.Argument(..., help="A run folder from `phinetune train`."),
             tasks: str = typer.Option("arc_easy,piqa,winogrande,hellaswag", help="Comma-separated: arc_easy, arc_challenge, hellaswag, piqa, winogrande."),
             limit: Optional[int] = typer.Option(None, min=1, help="Score only the first N items of each task."),
             shots: int = typer.Option(0, min=0, help="Few-shot examples per prompt (from the training split)."),
             data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with the official eval files (ARC-Easy-Test.jsonl, piqa/valid.jsonl, hellaswag_val.jsonl, dev.jsonl ...: see docs/eval.md); default: lm-eval's Hub datasets (allenai/ai2_arc, baber/piqa, Rowan/hellaswag, allenai/winogrande) through `datasets`."),
             batch_size: int = typer.Option(16, min=1, help="Sequences per forward pass."),
             harness: bool = typer.Option(False, "--harness", help="Score with the real lm-eval harness (pip install 'phinetune[eval]')."),
             decontaminate: bool = typer.Option(False, "--decontaminate", help="Score only the items no training sample overlaps (13-gram / MinHash); contaminated items are counted either way."),
             checkpoints: Optional[str] = typer.Option(None, "--checkpoints", help="'all' or a list like base,step-10,best,last: also score each kept checkpoint and plot task score against step next to the loss curves.")) -> None:
    """Benchmark the base model and the fine-tuned one on the same items; flag drops larger than the standard error."""
    from phinetune.eval.tasks import parse_tasks

    check_run(run, "--checkpoints", final=not checkpoints, use_checkpoint="pass --checkpoints base,{name} to score its last checkpoint")
    chosen = parse_tasks(tasks)
    if data_dir is None:
        from phinetune.models.hub import require_datasets

        require_datasets(sorted({t.hub[0] for t in chosen}), "eval without --data-dir",
                         "pass --data-dir with the official files (see docs/eval.md)")
    from phinetune.eval.compare import EvalPlan, evaluate_run

    plan = EvalPlan(chosen, limit, shots, data_dir, batch_size, harness, decontaminate)
    if checkpoints:
        from phinetune.eval.checkpoints import evaluate_checkpoints

        evaluate_checkpoints(run, plan, checkpoints)
        return
    evaluate_run(run, plan)


@app.command()
def report(run: str = typer.Argument(..., help="A run folder from `phinetune train`."),
           samples: int = typer.Option(3, min=0, help="Held-out prompts to answer with base and tuned model (0: none; RUN/compare.md wins if present).")) -> None:
    """Write RUN/report.html (self-contained) and RUN/report.md: config, pre-flight, curves, benchmarks, sample answers."""
    from phinetune.runs.run_dir import RunDir
    from phinetune.runs.status import NO_SAMPLES

    kept = RunDir(Path(run)).compare.exists() or RunDir(Path(run)).samples.exists()  # answers the report reuses
    check_run(run, None, final=samples > 0 and not kept, instead=NO_SAMPLES)
    from phinetune.report.page import write_report

    html_path, md_path = write_report(run, samples)
    console.print(f"report: {html_path}  (markdown: {md_path})")


@app.command()
def synth(args: Optional[List[str]] = typer.Argument(None, help="A synth config (see configs/synth/), followed by dotted overrides like stages.riddles.calls=5.", show_default=False),
          config_option: Optional[str] = typer.Option(None, "--config", help=CONFIG_OPTION_HELP)) -> None:
    """Grow seed questions into multi-turn conversations with a teacher model; re-run the same command to resume."""
    from phinetune.synth.config import load_synth_config
    from phinetune.synth.run import run_synth

    config, overrides = split_args(with_config_option(args, config_option))
    if config is None:
        raise PhinetuneError("give a synth config first, e.g. phinetune synth configs/synth/riddles.yaml")
    run_synth(load_synth_config(config, overrides))


@app.command()
def compare(run: str = typer.Argument(..., help="A run folder from `phinetune train`."),
            prompts: Optional[Path] = typer.Option(None, "--prompts", help="JSONL of prompts ({\"prompt\"} or {\"messages\"}, optional \"reference\"); default: the run's eval data."),
            n: int = typer.Option(5, "--n", help="How many default prompts to take from the eval data."),
            out: Optional[Path] = typer.Option(None, "--out", help="Markdown file (default RUN/compare.md)."),
            max_new_tokens: int = typer.Option(128), temperature: float = typer.Option(0.0, help="0 = greedy."),
            top_k: int = typer.Option(0), top_p: float = typer.Option(1.0), seed: Optional[int] = typer.Option(None),
            batch_size: int = typer.Option(8), dtype: str = typer.Option("auto"), quant: str = typer.Option("none"),
            checkpoints: Optional[str] = typer.Option(None, "--checkpoints", help="'all' (base, every kept checkpoint, last) or a list like base,step-10,best,last: one column each (Markdown: RUN/compare_checkpoints.md).")) -> None:
    """Base vs fine-tuned answers to the same prompts, side by side (terminal table + Markdown)."""
    check_run(run, "--checkpoints", final=not checkpoints, use_checkpoint="pass --checkpoints base,{name} to compare the base with its last checkpoint")
    from phinetune.infer.compare import compare_checkpoints, compare_run
    from phinetune.infer.complete import Sampling
    from phinetune.runs.loading import LoadOptions

    sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed)
    if checkpoints:
        compare_checkpoints(run, checkpoints, prompts, n, sampling, batch_size, dtype, quant, out)
        return
    compare_run(run, prompts, n, sampling, batch_size, LoadOptions(dtype, quant), out)


@app.command()
def judge(run: str = typer.Argument(..., help="A run folder from `phinetune train`."),
          judge_model: str = typer.Option(..., "--judge-model", help="The judge: a model name at an OpenAI-compatible endpoint, or (with --judge-kind local) a run/merged folder, model id or tiny-* name."),
          judge_kind: str = typer.Option("openai", "--judge-kind", help="openai (any OpenAI-compatible endpoint, e.g. `phinetune serve`) or local."),
          base_url: Optional[str] = typer.Option(None, "--base-url", help="Endpoint base URL ending in /v1 (default: $PHINETUNE_TEACHER_BASE_URL, $OPENAI_BASE_URL, else OpenAI)."),
          api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the judge's API key."),
          a: str = typer.Option("base", "--a", help="First model: base, last, best or step-N."),
          b: str = typer.Option("last", "--b", help="Second model (the one whose win rate is reported): base, last, best or step-N."),
          prompts: Optional[Path] = typer.Option(None, "--prompts", help="JSONL of prompts; default: the run's held-out prompts."),
          n: int = typer.Option(10, "--n", min=1, help="How many held-out prompts to judge."),
          max_new_tokens: int = typer.Option(128, help="Most tokens per answer being judged."),
          judge_max_tokens: int = typer.Option(512, help="Most tokens per judge verdict (its reasons, then [[A]]/[[B]]/[[C]])."),
          concurrency: int = typer.Option(8, help="Judge requests in flight at once (openai)."),
          price_input_per_1m: float = typer.Option(0.0, help="USD per million prompt tokens, for the cost counter."),
          price_output_per_1m: float = typer.Option(0.0, help="USD per million completion tokens.")) -> None:
    """A judge model compares two models' answers pairwise, in both orders: win/tie/loss rates with 95% intervals and its reasons."""
    last = "--b" if b == "last" else "--a" if a == "last" else None
    check_run(run, "--b", final=last is not None and final_weights_named(run), use_checkpoint=f"pass {last} {{name}} to judge its last checkpoint")
    from pydantic import ValidationError

    from phinetune.errors import ConfigError
    from phinetune.eval.judge import JUDGE_FLAGS, Sides, judge_run
    from phinetune.teachers.config import TeacherConfig

    try:
        teacher = TeacherConfig(kind=judge_kind, model=judge_model, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
                                price_input_per_1m=price_input_per_1m, price_output_per_1m=price_output_per_1m)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{JUDGE_FLAGS.get(str(err['loc'][0]), err['loc'][0])}: {err['msg']} (got {err.get('input')!r})") from None
    judge_run(run, teacher, Sides(a, b), prompts, n, max_new_tokens, judge_max_tokens=judge_max_tokens)


@app.command()
def serve(targets: list[str] = typer.Argument(..., help="A run folder, a merged folder, or a base model id; or several LoRA runs "
                                                          "on one base (each served under its folder name, plus the base)."),
          host: str = typer.Option("127.0.0.1", help="Bind address; anything but loopback exposes the model to the network."),
          port: int = typer.Option(8000),
          api_key: Optional[str] = typer.Option(None, help="Require 'Authorization: Bearer KEY' (or set PHINETUNE_API_KEY)."),
          model_name: Optional[str] = typer.Option(None, help="The model id clients pass (default: the folder name or model id)."),
          max_tokens: int = typer.Option(512, help="Largest max_tokens a request may ask for (and the chat default)."),
          max_body_kb: int = typer.Option(1024, help="Largest request body in KiB (413 above)."),
          max_queue: int = typer.Option(64, help="Requests that may wait for the model (429 above)."),
          max_batch: int = typer.Option(8, help="Prompts generated together when compatible requests wait together."),
          dtype: str = typer.Option("auto"), quant: str = typer.Option("none"),
          request_timeout: float = typer.Option(300.0, help="Seconds a request may take, queue wait included (504 after)."),
          cors_origin: list[str] = typer.Option([], help="Allow browser pages from this origin (repeat; '*' for any). Default: no CORS."),
          access_log: str = typer.Option("-", help="One JSON line per request: '-' stderr, 'off', or a file path."),
          log_prompts: bool = typer.Option(False, help="Also write prompt text into the access log."),
          checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help=CHECKPOINT_HELP + " One run folder only."),
          reasoning: str = typer.Option("separate", help="A reply's <think> trace: separate (reasoning_content, as vLLM), hide, or inline (left in content).")) -> None:
    """OpenAI-compatible HTTP API: /v1/chat/completions (SSE streaming; tools for Phi-4-mini), /v1/completions, /v1/models, /health, /metrics."""
    from phinetune.serve.settings import Listen, ServeSettings, check_port_free

    check_port_free(host, port)  # a busy port is known in milliseconds: before torch is imported and the model loaded
    for target in targets:
        check_source(target, checkpoint=checkpoint)
    from phinetune.runs.loading import LoadOptions
    from phinetune.serve.run import serve as run_serve

    settings = ServeSettings(model_name, api_key, max_tokens, max_body_kb * 1024, max_queue, max_batch, request_timeout,
                             list(cors_origin), log_prompts, reasoning)
    run_serve(targets, settings, Listen(host, port, access_log), LoadOptions(dtype, quant), checkpoint)


bench_app = typer.Typer(help="Speed and memory benchmarks (training against TRL with padding and a tuned TRL, inference per dtype).", no_args_is_help=True,
                        rich_markup_mode=None)
app.add_typer(bench_app, name="bench")


@bench_app.command("infer")
def bench_infer(target: Optional[str] = typer.Argument(None, help="A run folder, a merged folder, or a base model id (or use --workload)."),
                workload: Optional[str] = typer.Option(None, help="Instead of TARGET, a random-weight model built here: cpu-decode "
                                                       "(Phi-3-mini width, 2 layers) or tiny (seconds; for tests)."),
                dtype: str = typer.Option("bf16,fp32,nf4", "--dtype", help="Comma-separated: bf16, fp16, fp32, nf4."),
                prompt_tokens: int = typer.Option(128), new_tokens: int = typer.Option(64),
                batch_sizes: str = typer.Option("1,8", help="Comma-separated batch sizes."),
                out: Path = typer.Option(Path("bench-infer.json"), "--out", help="JSON results file.")) -> None:
    """Memory, prefill (TTFT, tokens/s) and decode tokens/s per dtype and batch size, and decode's share of the memory bandwidth measured in the same run."""
    if (target is None) == (workload is None):
        raise PhinetuneError("bench infer needs either a TARGET (run folder, merged folder or model id) or --workload NAME, not both")
    if target is not None:
        check_source(target)
    from phinetune.bench.infer import BenchSettings, bench_infer as run_bench, bench_workload

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(","))
    except ValueError:
        raise PhinetuneError(f"--batch-sizes must be comma-separated integers like 1,8 (got {batch_sizes!r})") from None
    dtypes, settings = [d.strip() for d in dtype.split(",") if d.strip()], BenchSettings(prompt_tokens, new_tokens, sizes)
    if workload is not None:
        bench_workload(workload, dtypes, settings, out)
    else:
        run_bench(target, dtypes, settings, out)


@bench_app.command("serve")
def bench_serve(target: Optional[str] = typer.Argument(None, help="A run folder, merged folder or model id to serve here (or use --url)."),
                url: Optional[str] = typer.Option(None, help="A running server's base URL instead, e.g. http://127.0.0.1:8000."),
                concurrency: str = typer.Option("1,8,32", help="Comma-separated numbers of concurrent clients."),
                requests: int = typer.Option(64, help="Requests per concurrency level (at least one per client)."),
                max_tokens: int = typer.Option(32, help="max_tokens of each request."),
                model: Optional[str] = typer.Option(None, help="The model id to ask for (default: the server's first)."),
                api_key: Optional[str] = typer.Option(None, help="For --url servers that require one."),
                out: Optional[Path] = typer.Option(None, "--out", help="Also write the rows as JSON here.")) -> None:
    """HTTP throughput and p50/p95 latency of `phinetune serve` at several concurrency levels."""
    from phinetune.bench.serve import bench_serve as run_bench

    try:
        levels = tuple(int(c) for c in concurrency.split(","))
    except ValueError:
        raise PhinetuneError(f"--concurrency must be comma-separated integers like 1,8,32 (got {concurrency!r})") from None
    run_bench(target, url, levels, requests, max_tokens, model, api_key, out=out)


@bench_app.command("train")
def bench_train(workload: str = typer.Option("cpu-reference", help="cpu-reference, gpu-reference (CUDA, QLoRA), gpu-reference-bf16 (CUDA, bf16 LoRA) or tiny (seconds; for tests)."),
                out: Optional[str] = typer.Option(None, "--out", help="Write every figure as JSON here."),
                parity: bool = typer.Option(False, help="Run both sides in fp32 on the same batches in the same order (no packing) and print the two loss curves."),
                rows: Optional[int] = typer.Option(None, help="Use only the first N data rows (default: the workload's)."),
                realdata: Optional[str] = typer.Option(None, help="Folder with the Phi-3 tokenizer and guanaco data (default: $PHINETUNE_REALDATA or ../shared/realdata; else a synthetic fallback)."),
                work_dir: Optional[str] = typer.Option(None, help="Where to write the model, data and logs (default: a temp folder)."),
                profile: bool = typer.Option(False, help="After the timed run, profile phinetune's steps and print how a step's time splits (matmuls, attention, LoRA, loss, optimizer, data, other)."),
                sides: Optional[str] = typer.Option(None, help="Comma-separated sides to run: baseline (TRL fp32 with padding; QLoRA on the GPU workload), trl-tuned, phinetune (default: all three)."),
                nproc: Optional[str] = typer.Option(None, "--nproc", help="Instead: phinetune alone on each process count, e.g. 1,2 (same workload and global batch): tokens/s and peak memory per rank."),
                accelerate_config: Optional[Path] = typer.Option(None, "--accelerate-config", help="With --nproc: the accelerate config each count launches with (DDP by default; e.g. configs/accelerate/fsdp.yaml)."),
                sweep: bool = typer.Option(False, "--sweep", help="Instead: one phinetune training step per (tokens x layers) point; tokens/s, peak memory and plan's estimate, as a table, JSON (--out) and PNG beside it."),
                seq: str = typer.Option("512,2048,8192", "--seq", help="--sweep: comma-separated tokens per row (32768 is optional: ~17 min for its 4-layer point)."),
                layers: str = typer.Option("1,2,4", "--layers", help="--sweep: comma-separated decoder layer counts."),
                width: str = typer.Option("reference", "--width", help="--sweep: reference (Phi-3-mini width) or tiny (seconds; for tests)."),
                checkpointing: str = typer.Option("auto", "--checkpointing", help="--sweep: gradient checkpointing auto (as train decides), on or off.")) -> None:
    """Train with phinetune, TRL with padding and a tuned TRL on identical work; print tokens/s, memory, MFU, losses, ratios, load."""
    if sweep:  # cost as the work grows (bench/sweep.py)
        from phinetune.bench.sweep import bench_sweep, parse_grid

        bench_sweep(width, parse_grid(seq, "seq"), parse_grid(layers, "layers"), out, work_dir, checkpointing)
        return
    if nproc is not None:  # the process-count scan (bench/scale.py)
        from phinetune.bench.scale import bench_scale, parse_nproc

        bench_scale(parse_nproc(nproc), workload, accelerate_config, out, rows, realdata, work_dir)
        return
    if accelerate_config is not None:
        raise PhinetuneError("bench train --accelerate-config applies to the process-count scan; pass --nproc too (e.g. --nproc 1,2)")
    from phinetune.bench.train import bench_train as run_bench

    run_bench(workload, out, parity, rows, realdata, work_dir, profile=profile,
              sides=tuple(s.strip() for s in sides.split(",") if s.strip()) if sides else None)


# ---------------------------------------------------------------- phinetune data ...

data_app = typer.Typer(help="Look at training data before training on it.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")


def data_config(**fields):
    """A DataConfig from CLI options, with the same one-line errors as a YAML config."""
    from pydantic import ValidationError

    from phinetune.config.schema import DataConfig
    from phinetune.errors import ConfigError

    try:
        return DataConfig(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"--{'-'.join(str(p) for p in err['loc'])}: {err['msg']}") from None


def parse_columns(pairs: List[str]) -> dict[str, str]:
    """--column prompt=QUESTIONS -> {prompt: QUESTIONS}."""
    from phinetune.errors import ConfigError

    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise ConfigError(f"--column {bad[0]!r}: expected OURS=THEIRS, e.g. --column prompt=QUESTIONS")
    return dict(p.split("=", 1) for p in pairs)


@data_app.command("inspect")
def data_inspect(data: str = typer.Argument(..., help="A data file or folder, a Hub dataset id, or builtin:riddles."),
                 model: str = typer.Option(..., "--model", help="Whose tokenizer and chat template: tiny-*, a Hub id in the local cache, or a local folder."),
                 format: str = typer.Option("auto", "--format", help="Record format (auto detects when unambiguous)."),
                 column: List[str] = typer.Option([], "--column", help="Field mapping OURS=THEIRS, repeatable (e.g. prompt=QUESTIONS)."),
                 max_length: int = typer.Option(512, help="Tokens per sample (longer ones are truncated)."),
                 mask: str = typer.Option("assistant", help="assistant, last_assistant or all."),
                 reasoning: str = typer.Option("train", help="Reasoning traces: train (default) or answer (train only the final answer)."),
                 split: str = typer.Option("train", help="Split of a Hub dataset."),
                 limit: Optional[int] = typer.Option(None, help="Only the first N records."),
                 skip_bad_rows: bool = typer.Option(False, help="Skip invalid rows (summarised) instead of stopping."),
                 samples: int = typer.Option(3, help="Rendered samples to show with their masks."),
                 spec: Optional[str] = typer.Option(None, help="Model spec key when it cannot be looked up from --model."),
                 fold_system: bool = typer.Option(False, help="Fold a system message into the first user turn (data.fold_system)."),
                 out: Path = typer.Option(Path("data-inspect"), "--out", help="Folder for report.json, lengths.png/.txt, samples.txt."),
                 objective: str = typer.Option("sft", "--objective", help="sft, or dpo/ipo/orpo/simpo (preference pairs) / kto (unpaired): chosen/rejected lengths and overlap."),
                 against: Optional[str] = typer.Option(None, "--against", help="Benchmarks to check the data against for contamination (13-gram overlap + MinHash near-duplicates), e.g. arc_easy,hellaswag,piqa,winogrande."),
                 against_dir: Optional[Path] = typer.Option(None, "--against-dir", help="Folder with the official eval files (as eval --data-dir); default: the Hub.")) -> None:
    """Counts, token-length histogram, share trained/truncated, samples with masks, duplicates; with --against, benchmark overlaps."""
    check_source(model, run_advice="--model takes the model whose tokenizer and chat template to use: pass the one it was trained from, --model {base}",
                 tokenizer_only=True)
    from phinetune.data.inspect import inspect_data, inspect_spec, load_inspect_tokenizer, print_inspection, write_outputs
    from phinetune.eval.tasks import parse_tasks

    if objective != "sft":
        return _inspect_preferences(data, objective, model, spec, max_length, limit, skip_bad_rows, split, out)

    cfg = data_config(train=data, format=format, columns=parse_columns(column), max_length=max_length, mask=mask,
                      split=split, limit=limit, skip_bad_rows=skip_bad_rows, fold_system=fold_system, reasoning=reasoning)
    benchmarks = parse_tasks(against) if against else []  # a typo fails before any tokenizing
    tokenizer, eot = load_inspect_tokenizer(model, spec)
    try:
        ins = inspect_data(cfg, tokenizer, eot, samples, inspect_spec(model, spec))
    except PhinetuneError as exc:  # the readers speak config keys; this verb's user typed flags
        raise PhinetuneError(as_inspect_flags(str(exc))) from None
    print_inspection(ins, tokenizer, write_outputs(ins, tokenizer, out))
    if benchmarks:
        from phinetune.data.readers import read_records
        from phinetune.eval import contamination

        records = read_records(cfg.train, cfg.format, cfg.columns, cfg.skip_bad_rows, cfg.limit, None, cfg.split)
        result = contamination.check_tasks(records, benchmarks, against_dir)
        contamination.print_contamination(result)
        console.print(f"written: {contamination.save(result, out / 'benchmark-contamination.json')}", highlight=False)

def _inspect_preferences(data, objective, model, spec, max_length, limit, skip_bad_rows, split, out: Path) -> None:
    import json

    from phinetune.data.inspect import inspect_spec, load_inspect_tokenizer
    from phinetune.data.preference import UNPAIRED, inspect_preferences

    if objective not in ("dpo", "ipo", "orpo", "simpo", "kto"):
        raise PhinetuneError(f"--objective {objective}: expected sft, dpo, ipo, orpo, simpo or kto")
    tokenizer, eot = load_inspect_tokenizer(model, spec)
    stats = inspect_preferences(data, UNPAIRED if objective == "kto" else "pairs", tokenizer, max_length, eot, limit, skip_bad_rows, split,
                                inspect_spec(model, spec))
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False))
    console.rule(f"[bold]data inspect ({objective}): {data}")
    for key, value in stats.items():
        if key not in ("source", "dropped") and value not in ({}, "", []):
            console.print(f"{key}: {value}", highlight=False)
    for line in stats["dropped"][:5]:
        console.print(f"dropped: {line}", style="yellow", highlight=False)
    console.print(f"written: {out / 'report.json'}", highlight=False)


# data.* keys as `phinetune data inspect` spells them (longest first: data.eval_size before data.eval).
INSPECT_FLAGS = {"data.skip_bad_rows": "--skip-bad-rows", "data.max_length": "--max-length", "data.columns": "--column",
                 "data.format": "--format", "data.split": "--split", "data.limit": "--limit", "data.mask": "--mask", "data.reasoning": "--reasoning",
                 "data.train / data.eval": "DATA", "data.train": "DATA"}


def as_inspect_flags(message: str) -> str:
    import re

    for key, flag in INSPECT_FLAGS.items():
        message = re.sub(rf"(?<![\w.]){re.escape(key)}(?!\w)", flag, message)
    return message

# ---- model knowledge: check, inspect, plan ------------------------------------------------------

@app.command()
def check(args: Optional[List[str]] = typer.Argument(None, help=CONFIG_HELP, show_default=False),
          save: Optional[Path] = typer.Option(None, "--save", help="Also write the report as JSON here."),
          config: Optional[str] = typer.Option(None, "--config", help=CONFIG_OPTION_HELP)) -> None:
    """Load, read the data and attach the adapter exactly as `train` would, print the pre-flight, and stop.

    Exits non-zero when the pre-flight finds a problem (the `preflight.*` overrides apply)."""
    cfg = resolve_config(with_config_option(args, config))
    check_source(cfg.model.name, cfg.model.revision, run_advice=TRAIN_FROM_RUN)
    from phinetune.train.check import check_config

    check_config(cfg, save)
    console.print("[bold green]pre-flight passed[/bold green]: nothing silently misconfigured was found", markup=True)


@app.command()
def inspect(model: str = typer.Argument(..., help="A spec key (phi3.5-moe), a Phi Hub id, a tiny-* name, a config.json / model folder, or a run folder (its base model).")) -> None:
    """Print the model analysis: architecture, parameters (total and active per token), attention layout,
    context and rope scaling, vocab, special tokens, LoRA target presets and dtypes. Needs no weights."""
    from phinetune.models.inspect import analysis

    for label, value in analysis(model_facts(model)).items():
        console.print(f"[bold]{label:>15}[/bold]  {escape(str(value))}", markup=True, highlight=False)


def model_facts(target: str):
    """What inspect and plan read: a model's facts, or those of a run folder's base model."""
    from phinetune.models.inspect import load_facts
    from phinetune.runs.run_dir import RunDir

    run = RunDir(Path(target).expanduser())
    if not run.info_file.exists():
        return load_facts(target)
    info = run.read_info()
    console.print(f"{target} is a run folder; its base model: {info.base_model}", highlight=False)
    return load_facts(info.base_model, info.spec)


@app.command()
def plan(model: Optional[str] = typer.Argument(None, help="A run config (.yaml: plans its model, method, data.max_length x train.batch_size, LoRA rank, targets, dropout and gradient checkpointing), or a spec key, Phi Hub id, config.json or run folder (as for inspect)."),
         method: Optional[str] = typer.Option(None, help="lora, qlora or full (default: the run config's, else lora)."),
         seq: Optional[int] = typer.Option(None, help="Tokens per sequence (default: the run config's data.max_length, else 2048)."),
         batch: Optional[int] = typer.Option(None, help="Sequences per micro-batch (default: the run config's train.batch_size, else 1)."),
         grad_checkpointing: Optional[bool] = typer.Option(None, "--grad-checkpointing/--no-grad-checkpointing", help="Recompute activations in backward (default: the run config's setting, else off)."),
         r: Optional[int] = typer.Option(None, "--r", help="LoRA rank (default: the run config's adapter.r, else 16)."),
         targets: Optional[str] = typer.Option(None, help="LoRA target preset (default: the run config's adapter.targets, else all-linear)."),
         validate: bool = typer.Option(False, "--validate", help="Measure peak memory of small random models on CPU and print the estimate's error."),
         device: str = typer.Option("cpu", "--device", help="With --validate: cpu, or cuda (measure on the GPU, bf16)."),
         quick: bool = typer.Option(False, "--quick", help="With --validate: only the tiny-phi3 cases (seconds; for smoke tests)."),
         out: Optional[Path] = typer.Option(None, "--out", help="With --validate: also write the measurements as JSON here.")) -> None:
    """Which GPU do I need? Memory breakdown and the smallest common GPU that fits."""
    from dataclasses import replace

    from phinetune.config import load_config
    from phinetune.models import plan as planner

    if validate:
        return _print_validation(device, quick, out)
    if model is None:
        raise PhinetuneError("plan needs a MODEL (a spec key such as phi3.5-mini, a Hub id or a config.json), a run folder, a run config (.yaml), or --validate")
    config = model if model.endswith((".yaml", ".yml")) else None
    base = planner.Settings()
    if config:
        cfg = load_config(config)
        model, base = cfg.model.name, planner.config_settings(cfg)
    given = dict(method=method, seq=seq, batch=batch, checkpointing=grad_checkpointing, r=r, targets=targets)
    flags = {k: v for k, v in given.items() if v is not None}
    s = replace(base, **flags)
    facts = model_facts(model)
    dtype = s.dtype or ("fp32" if "bf16" not in facts.spec.dtypes else "bf16")
    auto = s.checkpointing == "auto"  # as training decides: on when the run without it does not fit
    est = planner.estimate(facts, s.method, s.seq, s.batch, bool(s.checkpointing) and not auto, dtype, s.r, s.targets, s.dropout)
    shown = "auto (estimated without it)" if auto else "on" if s.checkpointing else "off"
    console.print(f"{facts.spec.key}: {s.method}, seq {s.seq} x batch {s.batch}, {dtype}, gradient checkpointing {shown}")
    console.print(planner.describe_settings(s, set(flags), config))
    for part, size in est.parts.items():
        console.print(f"  {part:<12} {size / planner.GiB:8.2f} GiB")
    console.print(f"  {'total':<12} {est.total / planner.GiB:8.2f} GiB   (activations with checkpointing "
                  f"{'off' if est.checkpointing else 'on'}: {est.activations_other / planner.GiB:.2f} GiB)")
    console.print(f"  needed       {est.needed() / planner.GiB:8.2f} GiB   (+{planner.MARGIN:.0%} fragmentation, +{planner.OVERHEAD_GIB:g} GiB CUDA context)")
    args = (facts, s.method, s.seq, s.batch)
    rest = (facts.spec.refused_dtypes, s.r, s.targets, s.dropout)
    gpu, gpu_dtype = planner.smallest_gpu(*args, bool(s.checkpointing), *rest)
    if gpu is None:
        console.print("smallest GPU: none of the common single GPUs fits; try --method qlora, --grad-checkpointing, a shorter --seq, or several GPUs")
        raise typer.Exit(1)
    note = ""
    if auto:  # the smallest GPU that holds the run with checkpointing; auto keeps it off there if it fits without
        note = f" (auto: checkpointing {'off' if planner.smallest_gpu(*args, False, *rest)[0] == gpu else 'on'} there)"
    console.print(f"smallest GPU: {gpu.name}" + (f" (runs in {gpu_dtype}: no bf16 on this card)" if gpu_dtype != dtype else "") + note)


def _print_validation(device: str, quick: bool, out: Optional[Path]) -> None:
    from phinetune.bench.plan import CASES, validate, write_validation

    if device not in ("cpu", "cuda"):
        raise PhinetuneError(f"plan --device must be cpu or cuda (got {device!r})")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise PhinetuneError("plan --validate --device cuda needs a CUDA GPU and none is visible; use --device cpu")
    how = "fp32 on CPU, peak RSS" if device == "cpu" else "bf16 on the GPU, torch.cuda.max_memory_allocated"
    console.print(f"plan estimate vs measured peak memory (one steady-state training step, {how}):")
    measurements = validate(device, [c for c in CASES if c[0] == "tiny-phi3"] if quick else CASES)
    for m in measurements:
        console.print(f"  {m.name:<13} {m.method:<5} seq {m.seq} x {m.batch}{' ckpt' if m.checkpointing else '     '}  "
                      f"estimate {m.estimate_bytes / 2**20:8.1f} MiB  measured {m.measured_bytes / 2**20:8.1f} MiB  error {m.error:+.1%}")
    if out:
        console.print(f"wrote {write_validation(measurements, out)}")


def print_error(message: str) -> None:
    console.print(f"[bold red]error:[/bold red] {escape(message)}", markup=True, highlight=False)


def path_error(exc: OSError) -> str:
    """An OSError at a path (output.dir=/proc/x, a file where a folder should be) as one sentence."""
    where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    return f"{where}: {exc.strerror or exc}; check the path (its parent folders must exist and be writable folders)"


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "--verbose" in sys.argv[1:2]:  # known before any library is imported (bitsandbytes logs at import)
        os.environ["PHINETUNE_VERBOSE"] = "1"
    no_hub_kernels()
    silence_libraries()
    # Nothing is left to collect when the interpreter exits: without this, its last garbage collections walk the
    # whole torch/transformers heap, 1.2 s of every command that imported them (measured: 6.0 -> 4.8 s for a bare
    # `import phinetune.train.recipe`). Objects are still finalized by reference counting, files closed by their
    # `with` blocks. At exit only (atexit), so a caller that runs main() in-process keeps collecting garbage.
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    try:
        app()
    except PhinetuneError as exc:
        print_error(str(exc))
        if os.environ.get("PHINETUNE_LAUNCHED") == "1":  # a rank of `train --nproc N`: the launcher names it with this sentence
            from phinetune.train.distributed.launch import record_for_launcher

            record_for_launcher(str(exc))
        sys.exit(getattr(exc, "exit_code", 2))  # a stop on SIGTERM/Ctrl-C exits 143/130, after its checkpoint
    except OSError as exc:
        if exc.filename is None:  # not about a path the user gave: a bug, keep its traceback
            raise
        print_error(path_error(exc))
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
