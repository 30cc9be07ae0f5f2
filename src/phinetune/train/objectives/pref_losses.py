"""Preference losses as pure functions of sequence log-probabilities, one per `train.objective`.

Each takes `Logps` (sums of per-token log-probabilities over each reply's trained tokens, the token counts,
and the reference model's sums where the method has a reference) and returns per-pair losses, the
per-pair rewards (for the logged curves), and a token-level term (ORPO's NLL) summed, not averaged, so
the caller can normalise it by the trained tokens of the whole optimizer step.

The formulas follow TRL 1.16 (trl/trainer/dpo_trainer.py `_compute_loss`, experimental/cpo and orpo,
kto_trainer.py) so tests/test_pref_losses.py can check ours against TRL's own trainer on identical batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from phinetune.config.schema import PreferenceConfig


@dataclass
class Logps:
    chosen: torch.Tensor  # (B,) summed log-probs of the chosen (KTO: the completion)
    rejected: torch.Tensor  # (B,) of the rejected (KTO: unused here; see `kl`)
    chosen_n: torch.Tensor  # (B,) trained tokens per chosen reply
    rejected_n: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    desirable: torch.Tensor | None = None  # (B,) bool, KTO
    kl: torch.Tensor | None = None  # scalar, KTO's detached KL estimate


@dataclass
class PrefLoss:
    per_pair: torch.Tensor  # (B,)
    reward_chosen: torch.Tensor  # (B,) detached
    reward_rejected: torch.Tensor
    token_sum: torch.Tensor  # scalar: a per-token term summed (ORPO's NLL), else 0


def _cdpo(z: torch.Tensor, smoothing: float) -> torch.Tensor:
    # conservative DPO (label smoothing): the preference label is flipped with probability `smoothing`;
    # with smoothing 0 this is TRL's "sigmoid" loss exactly.
    return -F.logsigmoid(z) * (1 - smoothing) - F.logsigmoid(-z) * smoothing


def dpo(lp: Logps, cfg: PreferenceConfig) -> PrefLoss:
    chosen_lr, rejected_lr = lp.chosen - lp.ref_chosen, lp.rejected - lp.ref_rejected
    per = _cdpo(cfg.beta * (chosen_lr - rejected_lr), cfg.label_smoothing)
    return PrefLoss(per, cfg.beta * chosen_lr.detach(), cfg.beta * rejected_lr.detach(), per.new_zeros(()))


def ipo(lp: Logps, cfg: PreferenceConfig) -> PrefLoss:
    # Length-normalised log-ratios, as TRL does (confirmed with the IPO authors, see TRL's comment).
    chosen_lr, rejected_lr = lp.chosen - lp.ref_chosen, lp.rejected - lp.ref_rejected
    delta = chosen_lr / lp.chosen_n.clamp(min=1) - rejected_lr / lp.rejected_n.clamp(min=1)
    per = (delta - 1 / (2 * cfg.beta)) ** 2
    return PrefLoss(per, cfg.beta * chosen_lr.detach(), cfg.beta * rejected_lr.detach(), per.new_zeros(()))


def simpo(lp: Logps, cfg: PreferenceConfig) -> PrefLoss:
    # Reference-free: average log-prob per token, with a target margin gamma (TRL CPOTrainer loss_type=simpo).
    chosen_avg, rejected_avg = lp.chosen / lp.chosen_n.clamp(min=1), lp.rejected / lp.rejected_n.clamp(min=1)
    per = _cdpo(cfg.beta * (chosen_avg - rejected_avg) - cfg.simpo_gamma, cfg.label_smoothing)
    return PrefLoss(per, cfg.beta * chosen_avg.detach(), cfg.beta * rejected_avg.detach(), per.new_zeros(()))


def orpo(lp: Logps, cfg: PreferenceConfig) -> PrefLoss:
    # NLL on the chosen reply + lambda * odds-ratio term (TRL ORPOTrainer: loss = nll - beta * logsigmoid(log_odds)).
    chosen_avg, rejected_avg = lp.chosen / lp.chosen_n.clamp(min=1), lp.rejected / lp.rejected_n.clamp(min=1)
    log_odds = (chosen_avg - rejected_avg) - (
        torch.log1p(-torch.exp(chosen_avg)) - torch.log1p(-torch.exp(rejected_avg))
    )
    per = -cfg.orpo_lambda * F.logsigmoid(log_odds)
    return PrefLoss(
        per, cfg.orpo_lambda * chosen_avg.detach(), cfg.orpo_lambda * rejected_avg.detach(), -lp.chosen.sum()
    )


def kto(lp: Logps, cfg: PreferenceConfig) -> PrefLoss:
    # Eqn (7) of the KTO paper as TRL's KTOTrainer writes it; `kl` is the batch's detached, clamped KL estimate.
    logratio = lp.chosen - lp.ref_chosen
    good = lp.desirable
    per = torch.where(
        good,
        cfg.kto_desirable_weight * (1 - torch.sigmoid(cfg.beta * (logratio - lp.kl))),
        cfg.kto_undesirable_weight * (1 - torch.sigmoid(cfg.beta * (lp.kl - logratio))),
    )
    reward = cfg.beta * logratio.detach()
    nan = torch.full_like(reward, float("nan"))
    # "chosen" = desirable samples' rewards, "rejected" = undesirable ones' (NaN where the other kind).
    return PrefLoss(per, torch.where(good, reward, nan), torch.where(good, nan, reward), per.new_zeros(()))


LOSSES: dict[str, Callable[[Logps, PreferenceConfig], PrefLoss]] = {
    "dpo": dpo,
    "ipo": ipo,
    "simpo": simpo,
    "orpo": orpo,
    "kto": kto,
}
REFERENCE_FREE = {"simpo", "orpo"}
