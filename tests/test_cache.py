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
        return DataConfig(**{"train": str(path), "eval_size": 2, "max_length": 64, "cache_dir": str(tmp_path / "cache"), **kw})

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


@pytest.mark.parametrize("change", [{"max_length": 32}, {"mask": "all"}, {"seed": 7}, {"eval_size": 3}, {"limit": 5}, {"dedupe": False}])
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
