"""The typed run config. Every field documents itself; unknown keys are rejected.

Defaults follow the well-tested choices of common recipes (LoRA r=16, alpha=16, dropout 0.05,
lr 1e-4, warmup 10%, linear schedule, NF4 with double quantization, max length 512).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    # extra="forbid" is what turns a typo like `learnig_rate` into an error instead of a silent default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name: str = Field(
        "tiny-phi3",
        description="Hub id (microsoft/Phi-3-mini-4k-instruct), local folder, or a built-in tiny model (tiny-phi3, tiny-phi2, tiny-phimoe, tiny-phi4, tiny-phi4-14b, tiny-phi4-reasoning, tiny-phi4-mini-reasoning, tiny-phi3-medium).",
    )
    spec: str | None = Field(
        None, description="Model spec key to use (phi3-mini-4k, phi2, ...); default: looked up from `name`."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to load.")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Compute dtype; auto picks bf16 where the GPU supports it, else fp32 on CPU."
    )
    quant: Literal["none", "nf4"] = Field(
        "none", description="nf4 loads the base in 4-bit NF4 with double quantization (QLoRA)."
    )
    trust_remote_code: bool = Field(
        False, description="Run model code from the Hub. Off unless you ask: it executes code from the internet."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field("sdpa", description="Attention kernel.")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute activations in backward to save memory; auto turns it on when `plan` says the run would not fit in the free device memory (train/recompute.py).",
    )
    end_of_turn: str | None = Field(
        None,
        description="Token that closes each assistant turn (trained, so the model learns to stop); default: the spec's, or read off the chat template.",
    )


class DataConfig(_Strict):
    train: str = Field(
        "builtin:riddles",
        description="Training data: a .jsonl/.json/.csv/.parquet file or folder, a Hub dataset id, or builtin:riddles.",
    )
    eval: str | None = Field(None, description="Eval data file; default: a seeded split of `train`.")
    format: Literal["auto", "messages", "riddles", "sharegpt", "alpaca", "guanaco", "prompt_completion", "text"] = (
        Field("auto", description="Record format; auto detects it when unambiguous (see docs/data.md).")
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="Map our field names to yours, e.g. {prompt: QUESTIONS, completion: ANSWERS}."
    )
    split: str = Field("train", description="Split to read from a Hub dataset.")
    eval_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of `train` held out for eval when `eval` is not given."
    )
    eval_size: int | None = Field(
        None, ge=1, description="Exact number of held-out eval samples (overrides eval_fraction)."
    )
    max_length: int = Field(512, ge=8, description="Maximum tokens per sample (and per packed sequence).")
    mask: Literal["assistant", "last_assistant", "all"] = Field(
        "assistant",
        description="Which tokens are trained: assistant turns (default), the last assistant turn, or everything.",
    )
    reasoning: Literal["train", "answer"] = Field(
        "train",
        description="Reasoning traces (<think>...</think> in assistant turns, or a reasoning/thinking field): train them (default: the model must learn to write them) or train only the final answer.",
    )
    fold_system: bool = Field(
        False,
        description="Fold a leading system message into the first user turn (system text, blank line, user text); for templates that drop system messages (Phi-3-mini-128k's original), which are refused otherwise.",
    )
    packing: bool = Field(True, description="Pack several samples per sequence, with no attention across samples.")
    dedupe: bool = Field(True, description="Drop identical conversations (counted and reported).")
    skip_bad_rows: bool = Field(False, description="Skip invalid rows with a summary instead of stopping at the first.")
    limit: int | None = Field(None, ge=1, description="Use only the first N records (quick experiments).")
    seed: int = Field(42, description="Seed for the train/eval split.")
    cache: bool = Field(
        True, description="Cache tokenized data, keyed by data content + tokenizer + template + these settings."
    )
    cache_dir: str | None = Field(
        None, description="Tokenized-data cache folder; default $PHINETUNE_CACHE/data or ~/.cache/phinetune/data."
    )


class AdapterConfig(_Strict):
    method: Literal["lora", "full"] = Field(
        "lora", description="lora trains adapters (QLoRA when model.quant=nf4); full trains every weight."
    )
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    targets: str | list[str] = Field(
        "all-linear",
        description="A preset from the model spec (attention, mlp, all-linear, experts) or a list of module names.",
    )
    target_parameters: list[str] = Field(
        default_factory=list, description="Extra 3-D parameters to adapt (MoE experts), e.g. mlp.experts.gate_up_proj."
    )
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained in full and saved with the adapter (embed_tokens, lm_head)."
    )
    train_new_tokens: Literal["rows", "full", "off"] = Field(
        "rows",
        description="Tokens the model spec adds (Phi-2 ChatML): train only their embedding/lm_head rows (PEFT trainable tokens), the full matrices (modules_to_save), or not at all.",
    )
    dora: bool = Field(
        False, description="DoRA: learn each adapted weight's magnitude apart from its LoRA direction (PEFT use_dora)."
    )
    rslora: bool = Field(
        False,
        description="rsLoRA: scale the update by alpha/sqrt(r) instead of alpha/r, so higher ranks keep learning (PEFT use_rslora).",
    )
    loraplus_ratio: float | None = Field(
        None,
        gt=0,
        description="LoRA+: the LoRA B matrices learn this many times faster than A (e.g. 16; PEFT create_loraplus_optimizer).",
    )
    neftune_alpha: float | None = Field(
        None,
        gt=0,
        description="NEFTune: add uniform noise of scale alpha/sqrt(length*hidden) to the input embeddings while training (e.g. 5).",
    )


class TrainConfig(_Strict):
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, ge=1, description="Sequences per micro-batch per device.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Share of steps spent warming up.")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate schedule after warmup."
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"] = Field(
        "adamw", description="Optimizer (the bitsandbytes ones need CUDA)."
    )
    eval_every: int = Field(50, ge=1, description="Evaluate every N optimizer steps (and at start and end).")
    save_every: int = Field(
        100,
        ge=0,
        description="Write a resumable checkpoint (adapter, optimizer, scheduler, RNG, data position) to RUN/checkpoints/step-N every N steps, so a crash loses at most N steps (0: none; SIGTERM/Ctrl-C still save one).",
    )
    keep_checkpoints: int = Field(2, ge=1, description="Keep only the newest N checkpoints.")
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list,
        description="Trackers besides metrics.jsonl: tensorboard (RUN/tensorboard), mlflow (local store RUN/mlruns).",
    )
    log_every: int = Field(5, ge=1, description="Log metrics every N steps.")
    seed: int = Field(0, description="Seed for weights init, dropout and data order.")
    recall_check: int = Field(
        0, ge=0, description="After training, greedy-decode N training prompts and check the trained answer comes back."
    )
    keep: list[str] = Field(
        default_factory=list,
        description="Also keep the best checkpoint by each of these, on top of the newest keep_checkpoints: eval_loss (lowest; for grpo, eval_reward: highest), or a task of eval.tasks, optionally with its metric (arc_easy, piqa:acc_norm; highest). Scored at every checkpoint save.",
    )
    objective: Literal["sft", "dpo", "ipo", "orpo", "simpo", "kto", "grpo"] = Field(
        "sft",
        description="What is optimised: sft (next-token loss on the replies), a preference loss on {prompt, chosen, rejected} data (dpo, ipo, orpo, simpo; kto on {prompt, completion, label}), or grpo (sampled replies scored by reward functions); see docs/preference.md.",
    )


class EvalConfig(_Strict):
    tasks: list[str] = Field(
        default_factory=list,
        description="Benchmarks this run is judged by (arc_easy, hellaswag, piqa, winogrande, arc_challenge): the pre-flight checks the training data against their items, and train.keep may rank checkpoints by them.",
    )
    data_dir: str | None = Field(
        None, description="Folder with the official eval files (as `phinetune eval --data-dir`); default: the Hub."
    )
    limit: int | None = Field(
        None, ge=1, description="Items per task scored at each checkpoint for train.keep (all when unset)."
    )
    contamination: Literal["warn", "refuse", "off"] = Field(
        "warn",
        description="Training samples overlapping eval.tasks items: warn (listed in the pre-flight and RUN/contamination.json), refuse to train, or do not check.",
    )


class OutputConfig(_Strict):
    dir: str = Field("runs/default", description="Run folder: config, adapter, tokenizer, metrics and plots land here.")
    overwrite: bool = Field(False, description="Replace an existing run in `dir` (otherwise refused).")


class PreflightConfig(_Strict):
    allow_unmatched_targets: bool = Field(False, description="Proceed even if a LoRA target pattern matches nothing.")
    allow_untrained_eot: bool = Field(
        False, description="Proceed even if the end-of-turn token is never trained, or too few samples keep it."
    )
    min_eot_share: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="Refuse the run when fewer than this share of chat samples keep their last end-of-turn token after truncation at data.max_length (the pre-flight names the max_length that would keep it); 0 turns the check off.",
    )
    allow_empty_samples: bool = Field(False, description="Proceed even if some samples have no trained tokens.")
    allow_untrained_new_tokens: bool = Field(
        False,
        description="Proceed even if tokens added to the vocabulary (Phi-2 ChatML) keep untrained embedding rows.",
    )


class PreferenceConfig(_Strict):
    beta: float = Field(
        0.1,
        gt=0,
        description="DPO/IPO/KTO: strength of the pull towards the reference (IPO's tau); SimPO: reward scale.",
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5, description="DPO/SimPO: probability that a preference label is flipped (conservative DPO)."
    )
    simpo_gamma: float = Field(0.5, ge=0.0, description="SimPO: target reward margin gamma.")
    orpo_lambda: float = Field(
        0.1, gt=0, description="ORPO: weight of the odds-ratio term added to the chosen reply's NLL."
    )
    kto_desirable_weight: float = Field(1.0, gt=0, description="KTO: weight of desirable (label=true) samples.")
    kto_undesirable_weight: float = Field(1.0, gt=0, description="KTO: weight of undesirable (label=false) samples.")
    reference: Literal["auto", "adapter_off", "copy", "cached"] = Field(
        "auto",
        description="Reference log-probabilities: the base with the adapter switched off (LoRA; no second copy), a frozen copy of the starting model, or computed once and cached in RUN/reference_logps.safetensors. auto: adapter_off for LoRA, cached for full.",
    )


class GRPOConfig(_Strict):
    rewards: list[str] = Field(
        default_factory=lambda: ["exact_answer"],
        description="Reward functions: built-ins (exact_answer, contains_answer, format, length) or dotted paths (mypkg.rewards:score) to fn(completion, answer, prompt) -> float.",
    )
    reward_weights: list[float] | None = Field(None, description="One weight per reward function (default: all 1).")
    group_size: int = Field(
        4, ge=2, description="Completions sampled per prompt; advantages are rewards relative to their group."
    )
    max_completion_length: int = Field(64, ge=1, description="Most tokens generated per completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    beta: float = Field(
        0.04, ge=0, description="Weight of the KL penalty towards the reference (0: no reference forward)."
    )
    epsilon: float = Field(0.2, gt=0, description="PPO-style clipping of the probability ratio.")
    format_regex: str = Field(r"^The answer is .+", description="Pattern the `format` reward checks (re.search).")
    target_length: int = Field(32, ge=1, description="Words the `length` reward aims at.")


class RunConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    preflight: PreflightConfig = Field(default_factory=PreflightConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _no_contradictions(self) -> RunConfig:
        if self.model.quant == "nf4" and self.adapter.method == "full":
            raise ValueError(
                "adapter.method=full cannot train 4-bit weights; use adapter.method=lora with model.quant=nf4 (QLoRA), or model.quant=none"
            )
        if self.data.eval is not None and self.data.eval_size is not None:
            raise ValueError("data.eval and data.eval_size both set; give an eval file or a split size, not both")
        # What the objective's evaluation measures (train/objectives/): GRPO's is a reward, the others' a loss.
        own = "eval_reward" if self.train.objective == "grpo" else "eval_loss"
        other = next((c for c in self.train.keep if c in {"eval_loss", "eval_reward"} - {own}), None)
        if other:
            raise ValueError(
                f"train.keep names {other}, which train.objective={self.train.objective} does not "
                f"measure: its evaluation is {own}; rank by that"
            )
        tasks = {t.split(":")[0] for t in self.train.keep if t != own}
        if tasks - set(self.eval.tasks):
            raise ValueError(
                f"train.keep names {sorted(tasks - set(self.eval.tasks))[0]!r}, which is not in eval.tasks {self.eval.tasks}; add it there so checkpoints get scored on it"
            )
        return self
