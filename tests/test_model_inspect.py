"""`inspect`: parameter counts from config arithmetic (exact on the tiny models, the published figures on
the real configs), attention layout, rope scaling, special tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import cli_here, realdata, run_cli
from phinetune.models.inspect import ModelFacts, analysis, count_params, load_facts
from phinetune.models.specs import SPECS, TINY_MODELS


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_count_is_exact_on_each_architecture(name):
    from phinetune.models.tiny import build_tiny

    model, _ = build_tiny(name)
    count = count_params(ModelFacts(name, model.config.to_dict(), SPECS[TINY_MODELS[name]]))
    assert count.total == sum(p.numel() for p in model.parameters())


def test_moe_total_and_active():
    count = count_params(load_facts("phi3.5-moe"))
    assert round(count.total / 1e9, 1) == 41.9 and round(count.active / 1e9, 1) == 6.6
    lines = analysis(load_facts("microsoft/Phi-3.5-MoE-instruct"))
    assert lines["parameters"] == "41.87B total, 6.64B active per token"
    assert "GQA, 4 query heads per kv head" in lines["attention"] and "longrope scaling from 4,096" in lines["context"]


@pytest.mark.parametrize(
    "config_file,billions",
    [
        ("phi-2_config.json", 2.8),
        ("phi-3-mini-4k-instruct_config.RECONSTRUCTED.json", 3.8),
        ("phi-3.5-mini-instruct_config.RECONSTRUCTED.json", 3.8),
        ("phi-4-mini-instruct_config.json", 3.8),
    ],
)
def test_real_configs(config_file, billions):
    facts = load_facts(str(realdata("configs", config_file)))
    count = count_params(facts)
    assert round(count.total / 1e9, 1) == billions and count.active == count.total
    assert facts.spec.key != "generic"
    # the spec's own facts agree with the real config
    assert count_params(load_facts(facts.spec.key)).total == pytest.approx(count.total, rel=1e-6)


def test_phi4_layout_and_tokens():
    lines = analysis(load_facts(str(realdata("configs", "phi-4-mini-instruct_config.json"))))
    assert lines["attention"] == "24 heads x 128 dims, 8 kv heads (GQA, 3 query heads per kv head)"
    assert "rotary on 75%" in lines["context"] and "tied" in lines["vocab"]
    assert "end of turn <|end|>" in lines["special tokens"] and "eos=199999" in lines["special tokens"]


def test_cli_inspect_and_errors(tmp_path):
    out = run_cli("inspect", str(realdata("configs", "phi-2_config.json"))).stdout
    assert "PhiForCausalLM" in out and "2.78B total" in out and "<|im_start|>" in out and "fp16 refused" in out
    bad = tmp_path / "config.json"
    bad.write_text('{"hidden_size": 8,\n "oops"}')
    proc = run_cli("inspect", str(bad), check=False)
    assert proc.returncode == 2 and "config.json:2" in proc.stdout and "Traceback" not in proc.stderr
    proc = run_cli("inspect", "no-such-model", check=False)
    assert proc.returncode == 2 and "phi3.5-moe" in proc.stdout


FIXTURES = Path(__file__).parent / "fixtures" / "configs"


@pytest.mark.parametrize(
    "config_file,key,total",
    [("phi-4_config.json", "phi4", "14.66B"), ("phi-3-medium-4k-instruct_config.json", "phi3-medium-4k", "13.96B")],
)
def test_cited_configs_of_the_14b_models(config_file, key, total):
    """Figures from the public configs (tests/fixtures/configs/SOURCE.txt), not from our specs."""
    facts = load_facts(str(FIXTURES / config_file))
    assert facts.spec.key == key
    lines = analysis(facts)
    assert lines["parameters"].startswith(f"{total} total")
    assert lines["attention"] == "40 heads x 128 dims, 10 kv heads (GQA, 4 query heads per kv head)"
    assert count_params(load_facts(key)).total == count_params(facts).total  # the spec agrees with the config
    assert "sources" in analysis(load_facts(key))


def test_phi4_family_inspect_lines():
    lines = analysis(load_facts("microsoft/Phi-4-reasoning"))
    assert "32,768 tokens; RoPE theta 500000" in lines["context"] and "<think>trace</think>" in lines["reasoning"]
    assert "pad <|dummy_85|>" in lines["special tokens"] and "end of turn <|im_end|>" in lines["special tokens"]
    assert (
        "tools" in analysis(load_facts("phi4-mini"))
        and "Your name is Phi" in analysis(load_facts("phi4-mini-reasoning"))["reasoning"]
    )


def test_inspect_and_plan_of_a_run_folder_look_at_its_base_model(tmp_path):
    """A run folder is read through its run.json: the same lines as inspecting its base (a Hub id, or the local
    folder a built-in model was written to) with the spec the run recorded."""
    import shutil

    from phinetune.runs.run_dir import RunDir, RunInfo

    base = tmp_path / "base"
    base.mkdir()
    shutil.copy(FIXTURES / "phi-4_config.json", base / "config.json")
    for base_model, spec, same_as in [
        ("microsoft/Phi-3.5-mini-instruct", "phi3.5-mini", "phi3.5-mini"),
        (str(base), "phi4", str(base)),
    ]:
        run = tmp_path / f"run-{spec}"
        run.mkdir()
        RunDir(run).write_info(
            RunInfo(base_model=base_model, spec=spec, method="lora", quant="none", dtype="bf16", status="finished")
        )
        for verb in ("inspect", "plan"):
            got = cli_here(verb, str(run)).stdout.splitlines()
            assert got[0] == f"{run} is a run folder; its base model: {base_model}"
            assert got[1:] == cli_here(verb, same_as).stdout.splitlines()


def test_inspect_names_a_misspelt_id_and_a_missing_path(tmp_path):
    proc = cli_here("inspect", "microsoft/Phi-3.5-mini-instruc", check=False)
    assert proc.returncode == 2 and "did you mean microsoft/Phi-3.5-mini-instruct?" in proc.stdout
    (tmp_path / "runs").mkdir()
    proc = cli_here("inspect", "runs/nope", cwd=tmp_path, check=False)
    assert (
        proc.returncode == 2
        and "error: runs/nope does not exist" in proc.stdout
        and "not a known model" not in proc.stdout
    )
    assert "Traceback" not in proc.stdout + proc.stderr
