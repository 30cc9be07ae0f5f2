"""`plan`: memory breakdown, the smallest GPU, and the estimate checked against a measured peak."""

from __future__ import annotations

import pytest

from conftest import run_cli
from phinetune.bench.plan import measure
from phinetune.models.inspect import load_facts
from phinetune.models.plan import GPUS, GiB, estimate, smallest_gpu
from phinetune.models.tiny import TINY_SIZES


def gpu_for(model: str, method: str, seq=2048, batch=1, ckpt=True):
    facts = load_facts(model)
    gpu, _ = smallest_gpu(facts, method, seq, batch, ckpt, facts.spec.refused_dtypes)
    return gpu.name if gpu else None


def test_breakdown_follows_the_method():
    facts = load_facts("phi3.5-mini")
    lora, qlora, full = (estimate(facts, m, 1024, 2) for m in ("lora", "qlora", "full"))
    assert lora.parts["weights"] == pytest.approx(3.82e9 * 2, rel=0.01)  # bf16
    assert qlora.parts["weights"] < lora.parts["weights"] / 3  # NF4 Linear layers
    assert full.parts["adapters"] == 0 and full.parts["optimizer"] == 2 * full.parts["gradients"]
    assert lora.parts["gradients"] < full.parts["gradients"] / 50
    ckpt = estimate(facts, "lora", 1024, 2, checkpointing=True)
    assert ckpt.parts["activations"] < lora.parts["activations"] and ckpt.activations_other == lora.parts["activations"]
    # linear in tokens: no seq x seq term; the loss holds one chunk of logits (full beyond ~1k positions), which
    # the backward's buffers outgrow beyond ~4k tokens at this width
    acts = [estimate(facts, "lora", seq, 2).parts["activations"] for seq in (4096, 8192, 16384)]
    assert acts[2] - acts[1] == pytest.approx(2 * (acts[1] - acts[0]))


def test_smallest_gpu_answers():
    assert gpu_for("phi3.5-mini", "qlora") == "T4 16GB"
    assert gpu_for("phi3.5-mini", "full") in ("A100 40GB", "A100 80GB")
    # NF4 quantizes only nn.Linear: the fused 3-D experts stay bf16 (40B params, ~80 GB)
    assert gpu_for("phi3.5-moe", "qlora") == "H200 141GB"
    assert gpu_for("phi3.5-moe", "full") is None
    assert [g.gib for g in GPUS] == sorted(g.gib for g in GPUS)


def test_nf4_leaves_moe_experts_unquantized(tmp_path):
    """The fact the MoE QLoRA plan rests on, checked on the installed transformers/bitsandbytes."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from phinetune.models.tiny import save_tiny

    path = save_tiny("tiny-phimoe", tmp_path / "moe")
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=torch.bfloat16,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        ),
    )
    layer = model.model.layers[0]
    assert type(layer.self_attn.q_proj.weight).__name__ == "Params4bit"
    assert layer.mlp.experts.gate_up_proj.dtype == torch.bfloat16


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_estimate_is_within_25_percent_of_the_measured_peak(method):
    """tiny-phi3, 256 x 4 (+14 % / +15 % in docs/models.md, ~7 % run-to-run): the estimate must land within 25 % of a peak measured
    in a fresh process. At this size the 34 MiB CPU runtime constant is half the peak; the 15 % bound is asserted
    where it means something, at hidden 256 (tests/test_bench_sweep.py)."""
    m = measure("tiny-phi3", TINY_SIZES, 1024, method, 256, 4, False)
    assert m.measured_bytes > 590_464 * 4  # covers at least the fp32 weights of tiny-phi3
    assert abs(m.estimate_bytes - m.measured_bytes) < 0.25 * m.measured_bytes, (m.estimate_bytes, m.measured_bytes)


def test_cli_plan():
    out = run_cli(
        "plan", "phi3.5-moe", "--method", "qlora", "--seq", "2048", "--batch", "1", "--grad-checkpointing"
    ).stdout
    for part in ("weights", "adapters", "gradients", "optimizer", "activations", "smallest GPU: H200 141GB"):
        assert part in out
    proc = run_cli("plan", "phi3.5-moe", "--method", "full", check=False)
    assert proc.returncode == 1 and "none of the common single GPUs fits" in proc.stdout
    proc = run_cli("plan", "phi2", "--method", "dora", check=False)
    assert proc.returncode == 2 and "'dora' is not one of 'lora', 'qlora', 'full'" in proc.stderr


# The table in docs/models.md ("Which GPU"), gradient checkpointing on, batch 1: kept in step with plan here.
PHI_FAMILY_GPUS = {
    ("phi4", "lora", 2048): "A100 40GB",
    ("phi4", "qlora", 2048): "T4 16GB",
    ("phi4", "lora", 16384): "A100 80GB",
    ("phi4", "qlora", 16384): "A100 40GB",
    ("phi4-mini-reasoning", "lora", 2048): "T4 16GB",
    ("phi4-mini-reasoning", "qlora", 16384): "T4 16GB",
    ("phi3-medium-128k", "qlora", 2048): "T4 16GB",
    ("phi3-medium-128k", "qlora", 16384): "A100 40GB",
}


@pytest.mark.parametrize("key,method,seq", list(PHI_FAMILY_GPUS))
def test_smallest_gpu_for_the_phi_family(key, method, seq):
    from phinetune.models.inspect import load_facts
    from phinetune.models.plan import estimate, smallest_gpu

    facts = load_facts(key)
    gpu, _ = smallest_gpu(facts, method, seq, 1, True, facts.spec.refused_dtypes)
    assert gpu.name == PHI_FAMILY_GPUS[(key, method, seq)]
    assert estimate(facts, "qlora", seq, 1, True).needed() < estimate(facts, "lora", seq, 1, True).needed()


def test_plan_counts_the_loss_chunk_train_uses():
    from phinetune.models.plan import LOSS_CHUNK_ELEMENTS
    from phinetune.train.loss import CHUNK_ELEMENTS

    assert LOSS_CHUNK_ELEMENTS == CHUNK_ELEMENTS


def test_plan_counts_the_dropout_train_uses():
    from phinetune.kernels.lora_dropout import MAX_P
    from phinetune.models.plan import DROP_POSITIONS_MAX_P

    assert DROP_POSITIONS_MAX_P == MAX_P


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_lora_input_bytes_match_what_autograd_saves_on_cpu(dtype):
    """adapted_input_bytes against the tensors a LoRA'd Linear really keeps for backward (saved_tensors_hooks), in a
    training step as train runs it on CPU: PositionDropout installed, bf16 adapters under adapter_autocast on a
    bf16 base. Beyond the plan's per-element figure, the layer keeps only rank-sized tensors, counted here by hand."""
    import torch
    from peft import LoraConfig, get_peft_model

    from phinetune.kernels.lora_dropout import install_lora_dropout
    from phinetune.models.plan import adapted_input_bytes
    from phinetune.train.precision import adapter_autocast

    torch.manual_seed(0)
    tokens, d_in, d_out, r, p = 512, 2048, 1024, 8, 0.05
    compute = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    model = get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(d_in, d_out, bias=False)).to(compute),
        LoraConfig(r=r, lora_alpha=16, lora_dropout=p, target_modules=["0"]),
    )
    assert install_lora_dropout(model) == 1
    model.train()
    params = {q.untyped_storage().data_ptr() for q in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(tokens, d_in, dtype=compute, requires_grad=True)
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        adapter_autocast(model, torch.bfloat16 if dtype == "bf16" else None),
    ):
        model(x).sum().backward()
    e = compute.itemsize
    rank_sized = (
        tokens * r * e + (r * d_in + d_out * r) * e if dtype == "bf16" else tokens * r * e
    )  # lora_B's input; autocast's weight casts
    expected = adapted_input_bytes(e, p, "cpu") * tokens * d_in + rank_sized
    assert sum(saved.values()) == pytest.approx(expected, rel=0.02)


@pytest.mark.slow
def test_validate_refuses_a_device_it_cannot_measure_on():
    proc = run_cli("plan", "--validate", "--device", "tpu", check=False)
    assert (
        proc.returncode == 2
        and "Invalid value for '--device'" in proc.stderr
        and "'tpu' is not one of 'cpu', 'cuda'" in proc.stderr
    )
    import torch

    if not torch.cuda.is_available():
        proc = run_cli("plan", "--validate", "--device", "cuda", check=False)
        assert proc.returncode == 2 and "needs a CUDA GPU and none is visible" in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr


def _gib(value: float) -> str:

    return f"{value / GiB:8.2f} GiB"


def test_plan_of_a_run_config_uses_its_settings_and_says_so():
    """The README's QLoRA example: its config turns gradient checkpointing on, so plan must too (it assumed off)."""
    from conftest import ROOT, cli_here
    from phinetune.models.inspect import load_facts
    from phinetune.models.plan import estimate

    config = (
        ROOT / "configs" / "phi3.5-mini-qlora.yaml"
    )  # nf4, gradient_checkpointing: true, max_length 1152, batch 4, r 16
    out = cli_here("plan", str(config)).stdout
    lines = out.splitlines()
    assert lines[0] == "phi3.5-mini: qlora, seq 1152 x batch 4, bf16, gradient checkpointing on"
    assert lines[1] == (
        f"settings from {config}: method qlora (adapter.method / model.quant), seq 1152 (data.max_length), batch 4 "
        "(train.batch_size), gradient checkpointing on (model.gradient_checkpointing), r 16 (adapter.r), targets "
        "all-linear (adapter.targets), LoRA dropout 0.05 (adapter.dropout)"
    )
    expected = estimate(load_facts("phi3.5-mini"), "qlora", 1152, 4, True, "bf16", 16, "all-linear", 0.05)
    assert f"  total        {_gib(expected.total)}" in out and f"  needed       {_gib(expected.needed())}" in out
    # a flag given with the config overrides its value, and is named as such
    out = cli_here("plan", str(config), "--no-grad-checkpointing", "--seq", "512").stdout.splitlines()
    assert out[0] == "phi3.5-mini: qlora, seq 512 x batch 4, bf16, gradient checkpointing off"
    assert out[1].endswith("; from the flags: seq 512, gradient checkpointing off") and "seq 1152" not in out[1]


def test_plan_without_a_config_says_what_it_assumed(tmp_path):
    from conftest import cli_here

    out = cli_here("plan", "phi3.5-mini", "--method", "qlora", "--seq", "512", "--batch", "8").stdout.splitlines()
    assert out[0] == "phi3.5-mini: qlora, seq 512 x batch 8, bf16, gradient checkpointing off"
    assert out[1] == (
        "assumed (not given; set with --grad-checkpointing, --r, --targets, or plan a run config to use its settings): "
        "gradient checkpointing off, r 16, targets all-linear, LoRA dropout 0.05; from the flags: method qlora, seq 512, batch 8"
    )
    # a config left at gradient_checkpointing: auto plans the run without it, and says what auto does on the GPU it names
    (tmp_path / "auto.yaml").write_text(
        "model: {name: microsoft/Phi-3.5-mini-instruct}\ndata: {train: x.jsonl, max_length: 8192}\n"
    )
    out = cli_here("plan", str(tmp_path / "auto.yaml")).stdout.splitlines()
    assert out[0] == "phi3.5-mini: lora, seq 8192 x batch 8, bf16, gradient checkpointing auto (estimated without it)"
    from phinetune.models.inspect import load_facts
    from phinetune.models.plan import smallest_gpu

    facts = load_facts("phi3.5-mini")
    with_it, without = (smallest_gpu(facts, "lora", 8192, 8, on, facts.spec.refused_dtypes)[0] for on in (True, False))
    assert with_it != without  # this size fits a smaller GPU only with checkpointing: auto turns it on there
    assert out[-1] == f"smallest GPU: {with_it.name} (auto: checkpointing on there)"
    proc = cli_here("plan", str(tmp_path / "missing.yaml"), check=False)
    assert proc.returncode == 2 and proc.stdout.startswith("error:") and "missing.yaml does not exist" in proc.stdout
