"""Fidelity: our preference losses and their gradients equal TRL's own DPOTrainer on identical batches.

TRL 1.16's loss lives inside DPOTrainer._compute_loss (policy forward, reference through the PEFT adapter
switched off, the loss formula), so the peer here is that method itself, called on a TRL batch built from
the very sequences our step trains on. Both sides share one PEFT model (so the same weights); LoRA B is
made non-zero first, so policy and reference differ and the loss is not the trivial log 2.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from phinetune.config import load_config
from phinetune.data.packing import unpacked
from phinetune.data.preference import PrefInfo, read_preferences, render_preferences
from phinetune.data.render import IGNORE
from phinetune.train.objectives.pref_losses import LOSSES, Logps
from phinetune.train.objectives.preference import PreferenceState, PrefRow, pair_losses


def _trl_batch(items: list[PrefRow], pad_id: int) -> dict:
    seqs = [r.chosen for r in items] + [r.rejected for r in items]
    width = max(len(s) for s in seqs)
    ids = [s.input_ids + [pad_id] * (width - len(s)) for s in seqs]
    completion = [[int(x != IGNORE) for x in s.labels] + [0] * (width - len(s)) for s in seqs]
    attention = [[1] * len(s) + [0] * (width - len(s)) for s in seqs]
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.tensor(attention),
        "completion_mask": torch.tensor(completion),
    }


@pytest.fixture(scope="module")
def trl_setup(tmp_path_factory):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from phinetune.models.tiny import build_tiny

    _, tok = build_tiny("tiny-phi3", seed=3)
    ds = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": "hi"}],
                "chosen": [{"role": "assistant", "content": "hello"}],
                "rejected": [{"role": "assistant", "content": "go"}],
            }
        ]
        * 2
    )
    out = tmp_path_factory.mktemp("trl")

    def make(loss_type: str, beta: float):
        args = DPOConfig(
            str(out),
            beta=beta,
            loss_type=[loss_type],
            report_to=[],
            use_cpu=True,
            bf16=False,
            per_device_train_batch_size=2,
            disable_dropout=True,
            logging_steps=1,
        )
        model, _ = build_tiny("tiny-phi3", seed=3)  # fresh each time: PEFT must wrap a clean model
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=ds,
            processing_class=tok,
            peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"),
        )
        gen = torch.Generator().manual_seed(0)
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.data = torch.randn(p.shape, generator=gen) * 0.05
        return trainer

    records = read_preferences("builtin:riddles_preferences", "pairs", limit=6)
    samples = render_preferences(records, tok, 256, "<|end|>", PrefInfo())
    items = [PrefRow(unpacked([s.chosen])[0], unpacked([s.rejected])[0]) for s in samples]
    return make, tok, items


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "objective,loss_type,beta", [("dpo", "sigmoid", 0.5), pytest.param("ipo", "ipo", 0.2, marks=pytest.mark.slow)]
)
def test_loss_and_gradients_equal_trl_dpo_trainer(trl_setup, objective, loss_type, beta):
    make, tok, items = trl_setup
    trainer = make(loss_type, beta)
    model = trainer.model
    model.train()

    model.zero_grad(set_to_none=True)
    theirs = trainer._compute_loss(model, _trl_batch(items, tok.pad_token_id), False)
    theirs.backward()
    their_grads = _grads(model)

    cfg = load_config(None, [f"train.objective={objective}", f"preference.beta={beta}"])
    loop = SimpleNamespace(cfg=cfg, accelerator=trainer.accelerator, tokenizer=tok, model=model)
    model.zero_grad(set_to_none=True)
    out, _ = pair_losses(loop, PreferenceState("adapter_off"), items)
    ours = out.per_pair.mean()
    ours.backward()
    our_grads = _grads(model)

    assert not math.isclose(theirs.item(), math.log(2), rel_tol=1e-3), "policy must differ from the reference"
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    assert set(our_grads) == set(their_grads) and our_grads
    for name, g in their_grads.items():
        torch.testing.assert_close(our_grads[name], g, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def _logps(b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda: -torch.rand(b, generator=g) * 20  # noqa: E731
    n = torch.randint(3, 12, (b,), generator=g).float()
    return Logps(r(), r(), n, n + 1, r(), r())


def test_simpo_and_orpo_follow_their_papers_formulas():
    lp = _logps()
    cfg = load_config(
        None, ["preference.beta=2.0", "preference.simpo_gamma=0.5", "preference.orpo_lambda=0.1"]
    ).preference
    ca, ra = lp.chosen / lp.chosen_n, lp.rejected / lp.rejected_n
    # SimPO (Meng et al. 2024, eq. 6): -log sigmoid(beta/|yw| log p(yw) - beta/|yl| log p(yl) - gamma)
    expected = -torch.log(torch.sigmoid(2.0 * ca - 2.0 * ra - 0.5))
    torch.testing.assert_close(LOSSES["simpo"](lp, cfg).per_pair, expected)
    # ORPO (Hong et al. 2024, eq. 6-7): odds(y) = p/(1-p) with p the mean-token probability
    odds = lambda x: torch.exp(x) / (1 - torch.exp(x))  # noqa: E731
    expected = -0.1 * torch.log(torch.sigmoid(torch.log(odds(ca) / odds(ra))))
    out = LOSSES["orpo"](lp, cfg)
    torch.testing.assert_close(out.per_pair, expected)
    assert out.token_sum.item() == pytest.approx(-lp.chosen.sum().item())


def test_dpo_label_smoothing_is_the_conservative_mix():
    lp = _logps(seed=1)
    cfg = load_config(None, ["preference.beta=0.3", "preference.label_smoothing=0.2"]).preference
    z = 0.3 * ((lp.chosen - lp.ref_chosen) - (lp.rejected - lp.ref_rejected))
    expected = 0.8 * -torch.log(torch.sigmoid(z)) + 0.2 * -torch.log(torch.sigmoid(-z))
    torch.testing.assert_close(LOSSES["dpo"](lp, cfg).per_pair, expected)


def test_kto_weights_desirable_and_undesirable_sides():
    lp = _logps(4, seed=2)
    lp.desirable = torch.tensor([True, False, True, False])
    lp.kl = torch.tensor(0.3)
    cfg = load_config(None, ["preference.beta=0.5", "preference.kto_undesirable_weight=2.0"]).preference
    lr = lp.chosen - lp.ref_chosen
    expected = torch.where(
        lp.desirable, 1 - torch.sigmoid(0.5 * (lr - 0.3)), 2.0 * (1 - torch.sigmoid(0.5 * (0.3 - lr)))
    )
    out = LOSSES["kto"](lp, cfg)
    torch.testing.assert_close(out.per_pair, expected)
    assert torch.isnan(out.reward_chosen[1]) and torch.isnan(out.reward_rejected[0])
