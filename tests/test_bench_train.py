"""`phinetune bench train` machinery on the tiny workload: both rows, ratios, training proofs, parity."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import cli_here
from phinetune.bench.train import check_trained, model_flops, parity_order, summarize
from phinetune.bench.train_child import TrainingProof, reseed_lora
from phinetune.bench.workloads import WORKLOADS
from phinetune.errors import PhinetuneError


@pytest.fixture(scope="module")
def parity_report(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    out = work / "report.json"
    proc = cli_here("bench", "train", "--workload", "tiny", "--parity", "--work-dir", str(work), "--out", str(out))
    return json.loads(out.read_text()), proc.stdout


def test_bench_prints_both_rows_and_ratios(parity_report):
    report, stdout = parity_report
    assert "baseline" in stdout and "phinetune" in stdout and "ratios:" in stdout
    for side in ("baseline", "phinetune"):
        r = report["results"][side]
        assert r["tokens"] == report["tokens"] > 0
        assert r["tokens_per_s"] > 0 and r["memory"] > 0 and 0 < r["mfu"] < 1
        assert r["proof"]["lora_tensors"] > 0 and not r["proof"]["zero_grad_tensors"] and not r["proof"]["unchanged_tensors"]
        assert len(r["losses"]) == 3  # 12 rows / batch 4, unpacked in parity mode
    ratios = report["ratios"]
    base, fast = report["results"]["baseline"], report["results"]["phinetune"]
    assert ratios["speed"] == pytest.approx(fast["tokens_per_s"] / base["tokens_per_s"])
    assert ratios["memory"] == pytest.approx(fast["memory"] / base["memory"])
    assert report["peaks_flops"]["bf16"] > 0 and report["peaks_flops"]["fp32"] > 0


def test_parity_loss_curves_match(parity_report):
    report, stdout = parity_report
    a, b = report["results"]["baseline"]["losses"], report["results"]["phinetune"]["losses"]
    assert a[0] != a[-1]  # it trained
    assert report["parity_check"]["max_abs_diff"] < 1e-3 and report["parity_check"]["same_steps"]
    assert "largest |difference|" in stdout


def test_training_proof_catches_a_run_that_does_not_train():
    lin = torch.nn.Linear(4, 4)
    lin.lora_A = torch.nn.Parameter(torch.ones(2, 4))
    lin.lora_B = torch.nn.Parameter(torch.zeros(4, 2))
    proof = TrainingProof(lin)
    report = proof.report()  # no backward, no step
    assert report["zero_grad_tensors"] and report["unchanged_tensors"]
    with pytest.raises(PhinetuneError, match="did not train"):
        check_trained("baseline", {"proof": report})
    ((lin.lora_A ** 2).sum() + (lin.lora_B - 1).pow(2).sum()).backward()  # both get a non-zero gradient
    with torch.no_grad():
        lin.lora_A -= 0.1 * lin.lora_A.grad
        lin.lora_B -= 0.1 * lin.lora_B.grad
    ok = proof.report()
    assert not ok["zero_grad_tensors"] and not ok["unchanged_tensors"]
    check_trained("phinetune", {"proof": ok})


def test_reseed_lora_is_deterministic():
    a, b = torch.nn.Module(), torch.nn.Module()
    for m in (a, b):
        m.x_lora_A = torch.nn.Parameter(torch.zeros(3, 8))
    torch.manual_seed(123)
    reseed_lora(a, 0)
    torch.manual_seed(999)
    reseed_lora(b, 0)
    assert torch.equal(a.x_lora_A, b.x_lora_A) and a.x_lora_A.abs().sum() > 0


def test_summarize_ratios_and_targets():
    w = WORKLOADS["cpu-reference"]
    results = {"baseline": {"tokens": 1000, "seconds": 10.0, "peak_rss": 6e9},
               "phinetune": {"tokens": 1000, "seconds": 2.0, "peak_rss": 2e9}}
    ratios = summarize(results, 1e12, {"bf16": 4e11, "fp32": 1e11}, w)
    assert ratios["speed"] == pytest.approx(5.0) and ratios["memory"] == pytest.approx(1 / 3) and ratios["meets_targets"]
    assert results["baseline"]["mfu"] == pytest.approx(1e12 / 10 / 4e11)
    results["phinetune"]["seconds"] = 5.0
    assert not summarize(results, 1e12, {"bf16": 4e11, "fp32": 1e11}, w)["meets_targets"]


def test_model_flops_counts_attention_and_matmuls():
    w = WORKLOADS["cpu-reference"]
    one = model_flops(w, [1])
    assert model_flops(w, [2]) > 2 * one  # attention grows with context
    assert one > 4 * (3072 * 32064)  # the LM head is counted


def test_parity_order_follows_phinetune_batches():
    ids = [[i] for i in range(10)]
    order = parity_order(ids, WORKLOADS["tiny"])
    assert sorted(order) == ids and order != ids


def test_unknown_workload_is_one_line_error():
    proc = cli_here("bench", "train", "--workload", "nope", check=False)
    assert proc.returncode == 2 and "unknown" in proc.stdout
