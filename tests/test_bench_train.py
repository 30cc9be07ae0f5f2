"""`phinetune bench train` machinery on the tiny workload: three rows, ratios, load verdicts, training proofs, parity, profile."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import cli_here
from phinetune.bench.machine import LoadWindow
from phinetune.bench.step_profile import PARTS
from phinetune.bench.train import check_trained, load_verdict, model_flops, parity_order, summarize
from phinetune.bench.train_child import TrainingProof, reseed_lora
from phinetune.bench.workloads import WORKLOADS
from phinetune.errors import PhinetuneError


@pytest.fixture(scope="module")
def parity_report(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    out = work / "report.json"
    # One run for every test here (each side is a subprocess): the three sides, parity, and the profile.
    proc = cli_here(
        "bench", "train", "--workload", "tiny", "--parity", "--profile", "--work-dir", str(work), "--out", str(out)
    )
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow
def test_bench_prints_three_rows_and_ratios_against_both_baselines(parity_report):
    report, stdout = parity_report
    for label in (
        "TRL with padding",
        "TRL tuned",
        "phinetune",
        "phinetune vs TRL with padding:",
        "phinetune vs TRL tuned:",
        "phinetune MFU:",
        "machine:",
        "whole run: load average",
    ):
        assert label in stdout, label
    for side in ("baseline", "trl-tuned", "phinetune"):
        r = report["results"][side]
        assert r["tokens"] == report["tokens"] > 0
        assert r["tokens_per_s"] > 0 and r["memory"] > 0 and 0 < r["mfu"] < 1
        assert (
            r["proof"]["lora_tensors"] > 0
            and not r["proof"]["zero_grad_tensors"]
            and not r["proof"]["unchanged_tensors"]
        )
        assert r["load"]["end"] is not None and "steady" in r["load"]
        assert r["cpu_user_s"] > 0 and r["cpu_sys_s"] >= 0  # the timed training's own CPU time
    assert (
        len(report["results"]["baseline"]["losses"]) == len(report["results"]["phinetune"]["losses"]) == 3
    )  # unpacked
    ratios = report["ratios"]
    fast = report["results"]["phinetune"]
    for side in ("baseline", "trl-tuned"):
        base = report["results"][side]
        assert ratios[side]["speed"] == pytest.approx(fast["tokens_per_s"] / base["tokens_per_s"])
        assert ratios[side]["memory"] == pytest.approx(fast["memory"] / base["memory"])
    assert ratios["speed"] == ratios["baseline"]["speed"]  # the top-level ratios stay those against TRL with padding
    assert report["peaks_flops"]["bf16"] > 0 and report["peaks_flops"]["fp32"] > 0
    assert report["machine"]["cpu"] and report["command"].startswith("phinetune bench train --workload tiny")


@pytest.mark.slow
def test_trl_tuned_side_runs_bf16_packed_padding_free(parity_report):
    report, _ = parity_report
    tuned = report["results"]["trl-tuned"]
    assert tuned["dtype"] == "bf16" and tuned["autocast"] == "bf16" and tuned["options"]["lora_dtype"] == "fp32"
    assert (
        tuned["options"]["packing"]
        and tuned["options"]["packing_strategy"] == "bfd"
        and tuned["options"]["padding_free"]
    )


@pytest.mark.slow
def test_profile_split_in_output_and_json(parity_report):
    report, stdout = parity_report
    split = report["profile"]
    assert set(split["seconds"]) == set(PARTS) and split["steps"] >= 1
    assert sum(split["share"].values()) == pytest.approx(1.0, rel=1e-6)
    assert split["seconds"]["matmuls"] > 0 and split["seconds"]["LoRA"] > 0
    assert "profile:" in stdout and all(f"\n{part} " in stdout for part in PARTS)


@pytest.mark.slow
def test_parity_loss_curves_match(parity_report):
    report, stdout = parity_report
    a = report["results"]["baseline"]["losses"]
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
    ((lin.lora_A**2).sum() + (lin.lora_B - 1).pow(2).sum()).backward()  # both get a non-zero gradient
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


def _side(seconds, rss, others=0.2, load=(1.0, 1.0, 1.0)):
    return {
        "tokens": 1000,
        "seconds": seconds,
        "peak_rss": rss,
        "others_cores": others,
        "load": {"start": load, "end": load, "steady": True},
    }


def test_summarize_ratios_and_targets():
    w = WORKLOADS["cpu-reference"]
    results = {"baseline": _side(10.0, 6e9), "trl-tuned": _side(6.0, 6e9), "phinetune": _side(2.0, 2e9)}
    ratios = summarize(results, 5e11, {"bf16": 4e11, "fp32": 1e11}, w)
    assert (
        ratios["speed"] == pytest.approx(5.0) and ratios["memory"] == pytest.approx(1 / 3) and ratios["meets_targets"]
    )
    assert ratios["trl-tuned"]["speed"] == pytest.approx(3.0) and ratios["trl-tuned"]["meets_targets"]
    assert ratios["trl-tuned"]["load"] is None
    assert results["baseline"]["mfu"] == pytest.approx(5e11 / 10 / 4e11)
    assert (
        ratios["mfu"]["value"] == pytest.approx(5e11 / 2 / 4e11) and not ratios["mfu"]["meets_targets"]
    )  # 62.5% < 70%
    results["phinetune"]["seconds"] = 2.5  # 4x TRL with padding but only 2.4x TRL tuned
    ratios = summarize(results, 5e11, {"bf16": 4e11, "fp32": 1e11}, w)
    assert ratios["meets_targets"] and not ratios["trl-tuned"]["meets_targets"]
    results["phinetune"]["seconds"] = 5.0
    assert not summarize(results, 5e11, {"bf16": 4e11, "fp32": 1e11}, w)["meets_targets"]


def test_a_ratio_is_not_judged_when_the_load_changed_between_sides():
    w = WORKLOADS["cpu-reference"]
    results = {
        "baseline": _side(10.0, 6e9, others=0.1),
        "trl-tuned": _side(6.0, 6e9, others=1.4),
        "phinetune": _side(2.0, 2e9, others=0.2),
    }
    ratios = summarize(results, 1e12, {"bf16": 4e11, "fp32": 1e11}, w)
    assert ratios["baseline"]["load"] is None  # 0.1 vs 0.2 cores: judged
    assert ratios["trl-tuned"]["load"].startswith("not judged: load changed") and "1.40" in ratios["trl-tuned"]["load"]


def test_load_verdict_falls_back_to_the_load_windows(monkeypatch):
    from phinetune.bench import machine

    loads = iter([(0.5, 0.5, 0.5), (0.6, 0.5, 0.5), (0.5, 0.5, 0.5), (2.5, 1.0, 0.6)])
    monkeypatch.setattr(machine, "load_average", lambda: next(loads))
    held, moved = LoadWindow().close(), LoadWindow().close()  # a fake pair of sides: one steady, one not
    a, b = {"others_cores": None, "load": held.to_json()}, {"others_cores": None, "load": moved.to_json()}
    assert load_verdict(a, dict(a)) is None
    verdict = load_verdict(a, b)
    assert verdict.startswith("not judged: load changed") and "0.50 -> 2.50" in verdict


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
    said = " ".join(proc.stderr.split())  # the command line's own error, listing the workloads
    assert (
        proc.returncode == 2
        and "Invalid value for '--workload'" in said
        and "'nope' is not one of 'cpu-reference'," in said
    )


def test_unknown_side_is_one_line_error():
    proc = cli_here("bench", "train", "--workload", "tiny", "--sides", "baseline,nope", check=False)
    assert proc.returncode == 2 and "nope" in proc.stdout and "unknown" in proc.stdout
