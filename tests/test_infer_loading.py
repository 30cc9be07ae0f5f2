"""Loading a run for inference: an unfinished run says so and offers its checkpoint; --checkpoint loads it exactly."""

from __future__ import annotations

import pytest
import torch

from conftest import cli_here
from phinetune.errors import PhinetuneError
from phinetune.runs.loading import load_for_inference
from phinetune.train import recipe

IDS = torch.tensor([[3, 11, 42, 99, 7, 250, 4, 18]])


def _logits(loaded):
    with torch.no_grad():
        return loaded.model(IDS).logits.float()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 4-step run twice: once finished, once interrupted (Ctrl-C) just before its final save."""
    from phinetune.config import load_config

    root = tmp_path_factory.mktemp("interrupted")
    fast = [
        "model.name=tiny-phi3",
        "data.train=builtin:riddles",
        "data.eval_size=4",
        "data.limit=24",
        "train.max_steps=4",
        "train.batch_size=4",
        "train.eval_every=10",
        "train.log_every=1",
        "train.learning_rate=3e-3",
        "train.save_every=2",
        "adapter.modules_to_save=[embed_tokens,lm_head]",
    ]
    finished = recipe.train(load_config(None, fast + [f"output.dir={root / 'finished'}"])).run
    real_save = recipe.save

    def interrupted_save(loop):
        raise KeyboardInterrupt

    recipe.save = interrupted_save
    try:
        with pytest.raises(KeyboardInterrupt):
            recipe.train(load_config(None, fast + [f"output.dir={root / 'cut'}"]))
    finally:
        recipe.save = real_save
    return finished, root / "cut"


def test_unfinished_run_says_so_and_offers_its_last_checkpoint(runs):
    _, cut = runs
    with pytest.raises(PhinetuneError, match=r"unfinished run \(interrupted at step 4\).*--checkpoint last.*step-4"):
        load_for_inference(str(cut))


def test_checkpoint_last_is_the_model_the_run_would_have_saved(runs):
    """Independent reference: the identical run that finished saved its adapter at step 4 too."""
    finished, cut = runs
    expected = _logits(load_for_inference(str(finished.path), dtype="fp32"))
    got = _logits(load_for_inference(str(cut), dtype="fp32", checkpoint="last"))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    earlier = _logits(load_for_inference(str(cut), dtype="fp32", checkpoint="step-2"))
    assert not torch.allclose(earlier, expected, atol=1e-4)  # step-2 is really another checkpoint
    with pytest.raises(PhinetuneError, match=r"--checkpoint step-3: no such checkpoint.*step-2, step-4"):
        load_for_inference(str(cut), checkpoint="step-3")


def test_merge_and_generate_take_the_checkpoint(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    from phinetune.export.merge import merge_run

    finished, cut = runs
    out = merge_run(str(cut), str(tmp_path / "merged"), dtype="fp32", checkpoint="last")
    merged = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        torch.testing.assert_close(
            merged(IDS).logits.float(),
            _logits(load_for_inference(str(finished.path), dtype="fp32")),
            rtol=1e-4,
            atol=1e-4,
        )
    answered = cli_here("generate", str(cut), "hi", "--max-new-tokens", "2", "--checkpoint", "last")
    assert answered.stdout.strip() == load_generate(finished.path)


def load_generate(run_path) -> str:
    from phinetune.infer.complete import Sampling, generate_batch

    return generate_batch(
        load_for_inference(str(run_path)), [[{"role": "user", "content": "hi"}]], Sampling(max_new_tokens=2)
    )[0]


def test_export_takes_the_checkpoint(runs, tmp_path):
    """export --checkpoint last of the interrupted run writes the same GGUF tensors as the finished run's export."""
    gguf = pytest.importorskip("gguf")
    from phinetune.export.run import ExportPlan, export_run

    finished, cut = runs

    def tensors(run_path, name, checkpoint=None):
        out = export_run(str(run_path), str(tmp_path / name), ExportPlan("gguf", ("f32",), checkpoint=checkpoint))
        reader = gguf.GGUFReader(str(next(out.glob("*.gguf"))))
        return {t.name: torch.tensor(t.data.copy()) for t in reader.tensors}

    expected, got = tensors(finished.path, "finished"), tensors(cut, "last", "last")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    earlier = tensors(cut, "step2", "step-2")
    assert any(not torch.allclose(earlier[k], expected[k], atol=1e-5) for k in expected)  # step-2 is another model
    with pytest.raises(
        PhinetuneError, match=r"unfinished run \(interrupted at step 4\).*pass --checkpoint last .*\(step-4\)"
    ):
        export_run(str(cut), str(tmp_path / "none"), ExportPlan("gguf", ("f32",)))


def test_a_checkpoint_naming_its_base_by_another_path_loads_without_peft_noise(runs, tmp_path, monkeypatch):
    """A run trained from another folder (its checkpoint's adapter config names the base by a relative path) is
    loaded onto the run's own base on purpose: PEFT's "base_model_name_or_path was renamed" warning stays out
    of the output, and comes back with --verbose."""
    import json
    import shutil
    import warnings

    _, cut = runs
    moved = shutil.copytree(cut, tmp_path / "cut")
    for config in moved.glob("checkpoints/*/adapter_config.json"):
        body = json.loads(config.read_text())
        body["base_model_name_or_path"] = (
            "runs/cut/base/tiny-phi3-seed0"  # as training from a relative output.dir recorded it
        )
        config.write_text(json.dumps(body))

    def peft_warnings(verbose: bool) -> list[str]:
        monkeypatch.setenv("PHINETUNE_VERBOSE", "1" if verbose else "0")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            load_for_inference(str(moved), dtype="fp32", checkpoint="last")
        return [str(w.message) for w in seen if "base_model_name_or_path" in str(w.message)]

    assert peft_warnings(verbose=False) == []
    assert peft_warnings(verbose=True) == [
        "The PEFT config's `base_model_name_or_path` was renamed from 'runs/cut/base/tiny-phi3-seed0' to "
        f"'{json.loads((moved / 'run.json').read_text())['base_model']}'. Please ensure that the correct base model is loaded "
        "when loading this checkpoint."
    ]
