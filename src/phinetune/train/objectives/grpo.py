"""GRPO (Shao et al. 2024, as TRL's GRPOTrainer computes it) as a step of the one recipe (train/recipe.py).

Each optimizer step: for every prompt of the step's micro-batches, sample grpo.group_size completions
through phinetune's one generation path (infer/complete.complete), score them with the reward functions
(train/objectives/rewards.py), and turn the scores into advantages relative to their group, (r - mean) / (std + 1e-4).
The loss is the clipped policy-gradient term plus beta times the k3 estimate of the KL to the reference
(the adapter switched off for LoRA, a frozen copy for full fine-tuning), averaged over every completion
token of the whole step (token-normalised, like SFT). One policy update per generation, so the ratio is 1
in value and the clip only matters for its gradient, as in TRL with num_iterations=1.

Sampling is seeded from (train.seed, step, process): a resumed run samples exactly what the uninterrupted
one did. Groups whose completions all got the same reward carry no signal (zero advantage); they are
counted per step (zero_std_groups) and in total at the end.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch

from phinetune.config import RunConfig
from phinetune.data.dataset import DataInfo, PreparedData, split_records
from phinetune.data.normalize import for_template
from phinetune.data.packing import Row, batches, collate
from phinetune.data.readers import ReadReport, Record
from phinetune.data.render import IGNORE, render_sample
from phinetune.errors import DataError
from phinetune.models.specs import get_spec
from phinetune.progress import console
from phinetune.runs.loading import Loaded
from phinetune.train.guards import check_finite
from phinetune.train.loop import Loop, StepStats, global_count, micro_batches, optimizer_step
from phinetune.train.objectives.preference import token_logps
from phinetune.train.objectives.rewards import Rewards


@dataclass
class PromptRow:
    prompt: list[dict]
    answer: str
    prompt_ids: list[int]
    where: str

    # What checkpoint.rows_digest and guards.describe_batch read.
    input_ids = property(lambda self: self.prompt_ids)
    labels = property(lambda self: [ord(c) for c in self.answer])
    position_ids = property(lambda self: list(range(len(self.prompt_ids))))

    def __len__(self) -> int:  # prompt tokens (completions are sampled), as the recipe's plan counts them
        return len(self.prompt_ids)


@dataclass
class GrpoData(PreparedData):
    prompt_rows: list[PromptRow] = field(default_factory=list)
    eval_prompt_rows: list[PromptRow] = field(default_factory=list)


@dataclass
class GrpoState:
    """What sampling, scoring and the KL term need, set up by Grpo.begin."""

    loaded: Loaded  # the policy as infer.complete samples from it (the training model itself)
    rewards: Rewards
    ref_model: torch.nn.Module | None = None  # full fine-tuning with grpo.beta: a frozen copy of the start
    zero_std_total: int = 0  # groups so far whose completions all got the same reward (reported at the end)


class Grpo:
    """train.objective=grpo: the objective, holding the policy's sampler, the reward functions and the reference."""

    name = "grpo"
    eval_key = "eval_reward"
    state: GrpoState  # set by begin

    def load_data(self, cfg: RunConfig, tokenizer, eot: str) -> GrpoData:
        """The prompts and their reference answers; the answers, rendered as SFT would, feed the pre-flight."""
        return load_data(cfg, tokenizer, eot)

    def rows(self, data: GrpoData, cfg: RunConfig) -> tuple[list[PromptRow], list[PromptRow]]:
        """One row per prompt: micro_batches deals out prompts, and each is sampled grpo.group_size times."""
        return data.prompt_rows, data.eval_prompt_rows

    def begin(self, loop: Loop) -> None:
        """The sampler, the reward functions (a bad name fails here, before step 1) and the reference model."""
        from phinetune.data.end_of_turn import stop_token_ids

        cfg, tok, model = loop.cfg, loop.tokenizer, loop.accelerator.unwrap_model(loop.model)
        spec = get_spec(cfg.model.name, cfg.model.spec)
        rewards = Rewards(cfg.grpo)
        copied = cfg.grpo.beta and cfg.adapter.method != "lora"  # LoRA's reference is the adapter switched off
        ref = copy.deepcopy(model).eval().requires_grad_(False) if copied else None
        self.state = GrpoState(Loaded(model, tok, spec, stop_token_ids(tok, spec), "training"), rewards, ref)

    def step(self, loop: Loop, step: int) -> StepStats:
        """Sample, score and turn the rewards into group advantages, then one policy-gradient update."""
        return train_step(loop, self.state, step)

    def evaluate(self, loop: Loop) -> float:
        """Mean reward of greedy completions of the eval prompts."""
        return evaluate(loop, self.state)

    def eval_metrics(self, value: float) -> dict[str, float]:
        return {self.eval_key: value}


# ---------------------------------------------------------------- data


def split_prompt(messages: list[dict], where: str) -> tuple[list[dict], str]:
    """The conversation up to its last assistant turn is the prompt; that turn is the reference answer."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DataError(f"{where}: GRPO needs a reference answer, and this record has no assistant turn")
    return messages[:last], messages[last]["content"]


def load_data(cfg: RunConfig, tokenizer, eot: str) -> GrpoData:
    report = ReadReport()
    train_recs, eval_recs, dups = split_records(cfg.data, cfg.data.skip_bad_rows, report)
    # Prompts written as SFT and inference write them (the spec's default system prompt, its tool format).
    spec = get_spec(cfg.model.name, cfg.model.spec)
    train_recs, eval_recs = (
        [Record(for_template(r.sample, spec), r.where) for r in recs] for recs in (train_recs, eval_recs)
    )
    # The pre-flight checks the reference answers render with a trained end-of-turn token, as for SFT.
    renders = [render_sample(tokenizer, r.sample, cfg.data.max_length, "last_assistant", eot) for r in train_recs]
    info = DataInfo(
        read=report.read,
        format=report.format,
        duplicates=dups,
        skipped=report.skipped,
        read_summary=report.summary(),
        train=len(train_recs),
        eval=len(eval_recs),
    )
    return GrpoData(
        renders,
        [],
        train_recs,
        info,
        prompt_rows=_prompt_rows(train_recs, tokenizer),
        eval_prompt_rows=_prompt_rows(eval_recs, tokenizer),
    )


def _prompt_rows(records, tokenizer) -> list[PromptRow]:
    out = []
    for r in records:
        if "messages" not in r.sample:
            raise DataError(f"{r.where}: GRPO needs conversations with a reference answer, not plain text")
        prompt, answer = split_prompt(r.sample["messages"], r.where)
        ids = tokenizer(_prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        out.append(PromptRow(prompt, answer, ids, r.where))
    return out


def _prompt_text(tok, prompt: list[dict]) -> str:
    return tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


# ---------------------------------------------------------------- sampling and scoring


@torch.no_grad()
def sample(loop: Loop, state: GrpoState, items: list[PromptRow], seed: int, greedy: bool = False):
    from phinetune.infer.complete import Sampling, complete

    g = loop.cfg.grpo
    loaded = state.loaded
    model = loaded.model
    was_training = model.training
    model.eval()  # sampling sees no dropout
    n = 1 if greedy else g.group_size
    prompts = [_prompt_text(loop.tokenizer, r.prompt) for r in items for _ in range(n)]
    sampling = Sampling(
        max_new_tokens=g.max_completion_length, temperature=0.0 if greedy else g.temperature, top_p=g.top_p, seed=seed
    )
    try:
        outs = complete(loaded, prompts, sampling)
    finally:
        model.train(was_training)
        loop.tokenizer.padding_side = "right"
    return outs


def score(state: GrpoState, items: list[PromptRow], outs, n: int) -> torch.Tensor:
    rewards = state.rewards
    return torch.tensor(
        [
            rewards.score(o.text.strip(), items[i // n].answer, items[i // n].prompt, items[i // n].where)
            for i, o in enumerate(outs)
        ],
        dtype=torch.float32,
    ).view(len(items), n)


def advantages(rewards: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(group-relative advantages, groups with no reward spread). rewards: (prompts, group_size)."""
    mean, std = rewards.mean(dim=1, keepdim=True), rewards.std(dim=1, keepdim=True)
    return ((rewards - mean) / (std + 1e-4)).flatten(), int((std.flatten() == 0).sum())


def _sequences(items: list[PromptRow], outs, n: int, pad_id: int) -> dict[str, torch.Tensor]:
    seqs = []
    for i, o in enumerate(outs):
        p, c = items[i // n].prompt_ids, list(o.token_ids)
        seqs.append(Row(p + c, [IGNORE] * len(p) + c, list(range(len(p) + len(c)))))
    return collate(seqs, pad_id)


# ---------------------------------------------------------------- step


def train_step(loop: Loop, state: GrpoState, step: int) -> StepStats:
    acc, cfg, g = loop.accelerator, loop.cfg, loop.cfg.grpo
    micro = micro_batches(loop, step)
    # Generate and score everything first: the loss is normalised by the completion tokens of the whole step.
    rollouts, all_rewards, zero_std = [], [], 0
    for i, items in enumerate(micro):
        outs = sample(
            loop,
            state,
            items,
            seed=(cfg.train.seed * 1_000_003 + step) * 1_000 + i * acc.num_processes + acc.process_index,
        )
        rewards = score(state, items, outs, g.group_size)
        adv, zeros = advantages(rewards)
        zero_std += zeros
        all_rewards.append(rewards.flatten())
        batch = _sequences(items, outs, g.group_size, loop.tokenizer.pad_token_id)
        rollouts.append((batch, adv))
    n_tokens = global_count(acc, sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b, _ in rollouts))
    total_loss, total_kl = 0.0, 0.0
    for i, (batch, adv) in enumerate(rollouts):
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        sync = acc.no_sync(loop.model) if i < len(rollouts) - 1 else contextlib.nullcontext()
        with sync, acc.autocast():
            logp, row_of, _ = token_logps(loop.model, batch)
            a = adv.to(acc.device)[row_of]
            ratio = torch.exp(logp - logp.detach())
            clipped = torch.clamp(ratio, 1 - g.epsilon, 1 + g.epsilon)
            per_token = -torch.min(ratio * a, clipped * a)
            if g.beta:
                ref = reference_logps(loop, state, batch)
                kl = torch.exp(ref - logp) - (ref - logp) - 1
                per_token = per_token + g.beta * kl
                total_kl += float(kl.detach().sum())
            loss = per_token.sum() / max(n_tokens, 1)
            acc.backward(loss * acc.num_processes)
        total_loss += float(loss.detach())
    step_loss = acc.reduce(torch.tensor(total_loss, device=acc.device), "sum").item()
    check_finite(step_loss, step, [[r for r in m] for m in micro], loop.tokenizer)
    grad_norm = optimizer_step(loop)
    rewards = torch.cat(all_rewards)
    stats = (
        acc.reduce(
            torch.tensor(
                [float(rewards.sum()), rewards.numel(), float((rewards**2).sum()), zero_std, total_kl],
                dtype=torch.float64,
                device=acc.device,
            ),
            "sum",
        )
        .cpu()
        .tolist()
    )
    mean = stats[0] / stats[1]
    state.zero_std_total += int(stats[3])
    metrics = {
        "reward_mean": mean,
        "reward_std": max(stats[2] / stats[1] - mean**2, 0.0) ** 0.5,
        "zero_std_groups": int(stats[3]),
        "completion_tokens": n_tokens / max(stats[1], 1),
    }
    if g.beta:
        metrics["kl"] = stats[4] / max(n_tokens, 1)
    if step + 1 == loop.total_steps and acc.is_main_process and state.zero_std_total:
        console.print(
            f"GRPO: {state.zero_std_total} group(s) had all-equal rewards and taught nothing "
            f"(see zero_std_groups in metrics.jsonl); a larger grpo.group_size or a graded reward helps"
        )
    tokens = global_count(acc, sum(int(b["n_real"]) for b, _ in rollouts))
    return StepStats(step_loss, grad_norm, loop.scheduler.get_last_lr()[0], tokens, n_tokens, metrics)


@torch.no_grad()
def reference_logps(loop: Loop, state: GrpoState, batch: dict) -> torch.Tensor:
    if state.ref_model is not None:
        return token_logps(state.ref_model, batch)[0]
    model = loop.accelerator.unwrap_model(loop.model)
    with model.disable_adapter():
        return token_logps(model, batch)[0]


@torch.no_grad()
def evaluate(loop: Loop, state: GrpoState) -> float:
    """Mean reward of greedy completions of the eval prompts (all processes)."""
    acc = loop.accelerator
    total, count = 0.0, 0
    for group in batches(
        loop.eval_rows[acc.process_index :: acc.num_processes], loop.cfg.train.batch_size, 0, 0, shuffle=False
    ):
        outs = sample(loop, state, group, seed=0, greedy=True)
        r = score(state, group, outs, 1)
        total, count = total + float(r.sum()), count + r.numel()
    total = acc.reduce(torch.tensor(total, device=acc.device), "sum").item()
    return total / max(global_count(acc, count), 1)
