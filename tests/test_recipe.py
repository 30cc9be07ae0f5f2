"""Training behaviour on a tiny model: adapters learn, base weights never move, the run folder is complete."""

import json
import re

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from phinetune.runs.folders import open_run
from phinetune.train.recipe import run_steps, setup, train


def _split_params(model):
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    base = {
        n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n and "modules_to_save" not in n
    }
    return lora, base


def test_lora_weights_change_and_base_stays_bit_identical(tiny_cfg):
    loop = setup(tiny_cfg("adapter.modules_to_save=[]"))
    lora_before, base_before = _split_params(loop.model)
    run_steps(loop)
    lora_after, base_after = _split_params(loop.model)
    assert lora_before and base_before
    changed = [n for n in lora_before if "lora_B" in n and not torch.equal(lora_before[n], lora_after[n])]
    assert len(changed) == sum("lora_B" in n for n in lora_before), "every LoRA B matrix must have trained"
    for name, before in base_before.items():
        assert torch.equal(before, base_after[name]), f"base weight {name} changed"


def _dequantized_base(model):
    """Base linear weights as real numbers. bitsandbytes repacks 4-bit storage between train and eval
    mode on CPU, so the packed bytes may move while the values they encode must not."""
    import bitsandbytes.functional as bnbf

    return {
        n: bnbf.dequantize_4bit(m.weight.data, m.weight.quant_state).clone()
        for n, m in model.named_modules()
        if getattr(getattr(m, "weight", None), "quant_state", None) is not None
    }


def test_qlora_on_cpu_trains_adapters_over_frozen_4bit_base(tiny_cfg):
    loop = setup(tiny_cfg("model.quant=nf4", "adapter.modules_to_save=[]"))
    before = _dequantized_base(loop.model)
    assert before, "nf4 must store base linear weights in 4-bit"
    lora_before, _ = _split_params(loop.model)
    run_steps(loop)  # includes a mid-run evaluation (eval mode and back)
    after = _dequantized_base(loop.model)
    for name, weight in before.items():
        assert torch.equal(weight, after[name]), f"4-bit base weight {name} changed"
    trained = dict(loop.model.named_parameters())
    assert any(not torch.equal(lora_before[n], trained[n].detach()) for n in lora_before if "lora_B" in n)


def test_train_writes_a_self_describing_run_folder(tiny_run):
    run = open_run(tiny_run)  # the session's shared run: the same config as tiny_cfg()
    for path in [
        run.config,
        run.info_file,
        run.adapter / "adapter_config.json",
        run.adapter / "adapter_model.safetensors",
        run.tokenizer / "tokenizer_config.json",
        run.metrics,
        run.plot,
    ]:
        assert path.exists(), path
    records = run.read_metrics()
    train_rows = [r for r in records if "loss" in r]
    assert train_rows and all({"loss", "lr", "grad_norm", "tokens_per_s"} <= r.keys() for r in train_rows)
    assert [r["step"] for r in records if "eval_loss" in r][0] == 0
    assert json.loads(run.info_file.read_text())["status"] == "finished"
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert evals[-1] < evals[0]
    assert "<|assistant|>" in (run.tokenizer / "chat_template.jinja").read_text()


def test_adapter_loads_with_plain_peft(tiny_run):
    run = open_run(tiny_run)
    base = AutoModelForCausalLM.from_pretrained(run.read_info().base_model)
    model = PeftModel.from_pretrained(base, str(run.adapter))
    ids = torch.tensor([[3, 10, 20, 30]])
    assert model(ids).logits.shape[-1] == base.config.vocab_size


def test_existing_run_is_never_overwritten_silently(tiny_cfg):
    from phinetune.errors import PhinetuneError

    cfg = tiny_cfg("train.max_steps=1")
    train(cfg)
    with pytest.raises(
        PhinetuneError, match="already finished; choose another output.dir or pass output.overwrite=true"
    ):
        train(cfg)
    with pytest.raises(PhinetuneError, match=r"already holds a different run \(.*learning_rate"):
        train(tiny_cfg("train.max_steps=1", "train.learning_rate=1e-5"))


def test_qlora_gradients_survive_a_mid_run_evaluation(tiny_cfg):
    """bitsandbytes repacks NF4 weights for CPU inference on eval-mode forwards, after which backward gave
    zero gradients to every layer below; phinetune disables that repack on trained modules."""
    from phinetune.data.packing import collate
    from phinetune.train.loss import loss_sum

    loop = setup(tiny_cfg("model.quant=nf4", "adapter.dropout=0", "adapter.modules_to_save=[]"))
    batch = collate(loop.train_rows[:2], loop.tokenizer.pad_token_id)

    def lora_grads():
        loop.model.train()
        loop.model.zero_grad()
        loss_sum(loop.model, batch)[0].backward()
        return {n: p.grad.clone() for n, p in loop.model.named_parameters() if "lora_B" in n}

    before = lora_grads()
    loop.model.eval()
    with torch.no_grad():
        loss_sum(loop.model, batch)
    after = lora_grads()
    assert all(g.norm() > 0 for g in before.values())
    for name, grad in before.items():
        torch.testing.assert_close(after[name], grad, msg=f"gradient of {name} changed after an eval pass")


def _fake_loop(samples: int, steps_per_epoch: int, epochs: float):
    from types import SimpleNamespace

    from phinetune.config import load_config

    cfg = load_config(None, [f"train.epochs={epochs}", "train.batch_size=4"])
    return SimpleNamespace(
        cfg=cfg,
        total_steps=int(steps_per_epoch * epochs),
        steps_per_epoch=steps_per_epoch,
        train_rows=[[0] * 100] * steps_per_epoch * 4,
        data=SimpleNamespace(train=[None] * samples),
        accelerator=SimpleNamespace(is_main_process=True, num_processes=1),
    )


def test_plan_is_printed_and_many_epochs_over_a_big_file_warn():
    """The issue's case: the default's 30 epochs copied onto a 500-row file is 2,520 steps (84 per epoch)."""
    from phinetune.progress import console
    from phinetune.train.recipe import announce_plan

    with console.capture() as big:
        announce_plan(_fake_loop(500, 84, 30))
    text = " ".join(big.get().split())
    assert (
        "plan: 2,520 optimizer steps (30 epochs x 84 steps, 4 sequences each), ~1,008,000 tokens over 500 training samples"
        in text
    )
    assert "warning: 30 epochs over 500 samples is 15,000 sample passes, 8x the embedded default's" in text
    with console.capture() as default:
        announce_plan(_fake_loop(56, 14, 30))  # the embedded default itself: 56 training riddles
    assert "plan: 420 optimizer steps" in default.get() and "warning" not in default.get()


def test_a_run_prints_its_plan_and_a_time_left_estimate_after_its_warm_up_steps(tiny_cfg, capsys):
    from phinetune.train.eta import MIN_STEPS, WARMUP
    from phinetune.train.recipe import train

    train(
        tiny_cfg(
            f"train.max_steps={WARMUP + MIN_STEPS + 2}",
            "train.eval_every=4",
            "train.save_every=5",
            "train.recall_check=0",
        )
    )
    out = " ".join(capsys.readouterr().out.split())
    assert "plan: 10 optimizer steps" in out
    # printed once, after step 8: 2 steps left, the evaluation at step 8 done, the final one and the save at step 10 still due
    found = re.findall(
        r"~\d+(?:\.\d)? (?:s|min|h) left \(estimate\): 2 steps at [\d.]+ s \(mean of the last 5; the first 3 "
        r"after the start are warm-up, left out\); 1 evaluation at ~[\d.]+ s each; 1 checkpoint save at ~[\d.]+ s each",
        out,
    )
    assert len(found) == 1, out[-2000:]
