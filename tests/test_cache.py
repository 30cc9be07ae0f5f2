"""Tokenized-data cache: a second run reuses it; any change in data, tokenizer, template or settings misses."""

from __future__ import annotations

import copy
import json

import pytest

from phinetune.config.schema import DataConfig
from phinetune.data import cache
from phinetune.data.dataset import prepare_data

EOT = "<|end|>"
ROWS = [{"prompt": f"What is {i} plus {i}?", "completion": f"It is {2 * i}."} for i in range(8)]


@pytest.fixture
def setup(tiny_phi3, tmp_path):
    _, tokenizer = tiny_phi3
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))

    def cfg(**kw):
        return DataConfig(
            **{"train": str(path), "eval_size": 2, "max_length": 64, "cache_dir": str(tmp_path / "cache"), **kw}
        )

    return tokenizer, path, cfg


def test_second_run_is_served_from_the_cache_unchanged(setup):
    tokenizer, _, cfg = setup
    first = prepare_data(cfg(), tokenizer, EOT)
    assert not first.info.cached and len(list((cache.cache_dir(cfg())).glob("*.json"))) == 1
    second = prepare_data(cfg(), tokenizer, EOT)
    assert second.info.cached
    assert [r.input_ids for r in second.train] == [r.input_ids for r in first.train]
    assert [r.labels for r in second.eval] == [r.labels for r in first.eval]
    assert [r.sample for r in second.train_records] == [r.sample for r in first.train_records]
    assert second.info.read == first.info.read == 8


@pytest.mark.parametrize(
    "change", [{"max_length": 32}, {"mask": "all"}, {"seed": 7}, {"eval_size": 3}, {"limit": 5}, {"dedupe": False}]
)
def test_a_changed_setting_never_reuses_a_stale_entry(setup, change):
    tokenizer, _, cfg = setup
    prepare_data(cfg(), tokenizer, EOT)
    changed = prepare_data(cfg(**change), tokenizer, EOT)
    assert not changed.info.cached
    fresh = prepare_data(cfg(**change, cache=False), tokenizer, EOT)
    assert [r.labels for r in changed.train] == [r.labels for r in fresh.train]


def test_packing_does_not_change_the_key(setup):
    tokenizer, _, cfg = setup
    prepare_data(cfg(), tokenizer, EOT)
    assert prepare_data(cfg(packing=False), tokenizer, EOT).info.cached


def test_changed_data_content_at_the_same_path_misses(setup):
    tokenizer, path, cfg = setup
    prepare_data(cfg(), tokenizer, EOT)
    path.write_text("".join(json.dumps({**r, "completion": r["completion"] + " Sure."}) + "\n" for r in ROWS))
    again = prepare_data(cfg(), tokenizer, EOT)
    assert not again.info.cached
    assert all(r.sample["messages"][1]["content"].endswith("Sure.") for r in again.train_records)


def test_changed_tokenizer_template_or_eot_misses(setup):
    tokenizer, _, cfg = setup
    prepare_data(cfg(), tokenizer, EOT)
    other = copy.deepcopy(tokenizer)
    other.chat_template = tokenizer.chat_template.replace("<|assistant|>", "<|assistant|> ")
    assert not prepare_data(cfg(), other, EOT).info.cached
    assert not prepare_data(cfg(), tokenizer, "<|endoftext|>").info.cached
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["riddle"])
    assert not prepare_data(cfg(), other, EOT).info.cached
    assert prepare_data(cfg(), tokenizer, EOT).info.cached


def test_a_damaged_entry_is_rebuilt(setup):
    tokenizer, _, cfg = setup
    prepare_data(cfg(), tokenizer, EOT)
    [entry] = cache.cache_dir(cfg()).glob("*.json")
    entry.write_text("{not json")
    data = prepare_data(cfg(), tokenizer, EOT)
    assert not data.info.cached and data.info.train == 6


def test_cache_off_writes_nothing(setup):
    tokenizer, _, cfg = setup
    prepare_data(cfg(cache=False), tokenizer, EOT)
    assert not cache.cache_dir(cfg()).exists()


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_preference_pairs_are_cached_and_never_read_as_sft_data(setup, tmp_path, objective):
    """The preference objectives' rendered pairs go through the same cache, in entries of their own layout."""
    from phinetune.config import load_config
    from phinetune.train.objectives.preference import load_data

    tokenizer, _, cfg = setup
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": f"It is {i}."} for i, r in enumerate(ROWS)]
    if objective == "kto":
        rows = [{"prompt": r["prompt"], "completion": r["chosen"], "label": i % 2 == 0} for i, r in enumerate(rows)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = lambda: load_config(
        None,
        [
            f"train.objective={objective}",
            f"data.train={pairs}",
            "data.eval_size=2",  # noqa: E731
            "data.max_length=64",
            f"data.cache_dir={cfg().cache_dir}",
        ],
    )
    first = load_data(run(), tokenizer, EOT)
    assert not first.info.cached and len(list(cache.cache_dir(cfg()).glob("*.json"))) == 1
    second = load_data(run(), tokenizer, EOT)
    assert second.info.cached and second.info.train == first.info.train == 6
    for a, b in zip(first.pairs + first.eval_pairs, second.pairs + second.eval_pairs):
        assert (b.chosen.input_ids, b.rejected.labels, b.where, b.desirable) == (
            a.chosen.input_ids,
            a.rejected.labels,
            a.where,
            a.desirable,
        )
    assert [r.sample for r in second.train_records] == [r.sample for r in first.train_records]
    assert second.pref_info == first.pref_info
    # The same file as SFT data (prompt/completion rows read the same) gets an entry of its own.
    sft = DataConfig(**{**run().data.model_dump(), "train": str(pairs)})
    assert cache.cache_key(sft, tokenizer, EOT) != cache.cache_key(
        sft, tokenizer, EOT, layout=f"preference-{objective}"
    )
    off = load_data(
        load_config(
            None,
            [
                f"train.objective={objective}",
                f"data.train={pairs}",
                "data.eval_size=2",
                "data.max_length=64",
                "data.cache=false",
                f"data.cache_dir={tmp_path / 'off'}",
            ],
        ),
        tokenizer,
        EOT,
    )
    assert not off.info.cached and not (tmp_path / "off").exists()
