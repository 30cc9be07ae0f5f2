"""Every format trains end to end on the tiny Phi-3; masks train only what the policy says; truncation
that leaves nothing to train is reported with the samples it hit."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import cli_here
from phinetune.config.schema import DataConfig
from phinetune.data.dataset import prepare_data
from phinetune.data.packing import make_rows
from phinetune.data.render import IGNORE

QA = [
    ("What has keys but opens no lock?", "A piano."),
    ("What gets wetter as it dries?", "A towel."),
    ("What has a neck but no head?", "A bottle."),
    ("What has hands but cannot clap?", "A clock."),
    ("What goes up but never comes down?", "Your age."),
    ("What has one eye but cannot see?", "A needle."),
]
EOT = "<|end|>"


def rows_for(fmt: str) -> list:
    makers = {
        "messages": lambda q, a: {
            "messages": [
                {"role": "system", "content": "Answer riddles."},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
        },
        "riddles": lambda q, a: {"messages": [q, a, "Sure?", "Yes, " + a]},
        "sharegpt": lambda q, a: {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
        "alpaca": lambda q, a: {"instruction": q, "input": "", "output": a},
        "guanaco": lambda q, a: {"text": f"### Human: {q}### Assistant: {a}"},
        "prompt_completion": lambda q, a: {"prompt": q, "completion": a},
        "text": lambda q, a: {"text": f"{q} {a}"},
    }
    return [makers[fmt](q, a) for q, a in QA]


def write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def data_cfg(path: Path, **kw) -> DataConfig:
    return DataConfig(**{"train": str(path), "eval_size": 1, "max_length": 96, "cache": False, **kw})


def trained_text(rendered, tokenizer) -> str:
    return tokenizer.decode([t for t in rendered.labels if t != IGNORE])


@pytest.mark.parametrize("fmt", ["messages", "riddles", "sharegpt", "alpaca", "guanaco", "prompt_completion", "text"])
def test_each_format_trains_end_to_end(tiny_phi3, tmp_path, fmt):
    from accelerate import Accelerator

    from phinetune.config import load_config
    from phinetune.train.objectives.sft import Sft

    base, tokenizer = tiny_phi3
    data = prepare_data(data_cfg(write(tmp_path / f"{fmt}.jsonl", rows_for(fmt))), tokenizer, EOT)
    assert data.info.format == fmt and data.info.read == 6 and data.info.train == 5 and data.info.empty == 0
    for rec, r in zip(data.train_records, data.train):
        if "messages" in rec.sample:  # assistant turns and their end-of-turn token, nothing else
            assert trained_text(r, tokenizer) == "".join(
                m["content"] + EOT for m in rec.sample["messages"] if m["role"] == "assistant"
            )
        else:
            assert r.n_trained == len(r.input_ids)
    model = copy.deepcopy(base).train()
    cfg = load_config(None, ["train.batch_size=8"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loop = SimpleNamespace(
        cfg=cfg,
        accelerator=Accelerator(cpu=True),
        model=model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
        train_rows=make_rows(data.train, 96, packing=True),
        steps_per_epoch=1,
        adapter_dtype=None,
    )
    losses = [Sft().step(loop, step).loss for step in range(3)]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses


def test_last_assistant_and_all_policies(tiny_phi3, tmp_path):
    _, tokenizer = tiny_phi3
    path = write(tmp_path / "r.jsonl", rows_for("riddles"))
    last = prepare_data(data_cfg(path, mask="last_assistant", dedupe=False), tokenizer, EOT)
    rec, r = last.train_records[0], last.train[0]
    assert trained_text(r, tokenizer) == rec.sample["messages"][-1]["content"] + EOT
    everything = prepare_data(data_cfg(path, mask="all"), tokenizer, EOT)
    assert all(r.n_trained == len(r.input_ids) for r in everything.train)


def test_truncation_that_empties_a_sample_is_counted_named_and_refused(tiny_phi3, tmp_path, tiny_cfg):
    from phinetune.models.specs import get_spec
    from phinetune.train.preflight import check

    model, tokenizer = tiny_phi3
    rows = rows_for("prompt_completion")
    rows[2] = {"prompt": "Tell me more. " * 40, "completion": "No."}  # the answer falls past max_length
    path = write(tmp_path / "long.jsonl", rows)
    data = prepare_data(data_cfg(path, eval_fraction=0.0, eval_size=None), tokenizer, EOT)
    assert data.info.empty == 1 and data.info.empty_where == [f"{path}:3"] and data.info.truncated == 1
    assert len(data.train) == 5
    cfg = tiny_cfg("adapter.method=full", f"data.train={path}")
    problems = check(cfg, get_spec("tiny-phi3"), model, tokenizer, data).problems
    assert any("1 sample(s) have no trained tokens" in p and f"{path}:3" in p for p in problems), problems
    cfg = tiny_cfg("adapter.method=full", "preflight.allow_empty_samples=true")
    # the emptied sample also lost its last end-of-turn token: 5/6 chat samples keep it, below 95%
    assert [p.split(" keep ")[0] for p in check(cfg, get_spec("tiny-phi3"), model, tokenizer, data).problems] == [
        "only 5/6 chat samples (83%)"
    ]
    cfg = tiny_cfg("adapter.method=full", "preflight.allow_empty_samples=true", "preflight.min_eot_share=0.8")
    assert check(cfg, get_spec("tiny-phi3"), model, tokenizer, data).problems == []


def test_duplicates_are_removed_and_counted(tiny_phi3, tmp_path):
    _, tokenizer = tiny_phi3
    rows = rows_for("alpaca")
    path = write(tmp_path / "dup.jsonl", rows + rows[:2])
    data = prepare_data(data_cfg(path), tokenizer, EOT)
    assert data.info.read == 8 and data.info.duplicates == 2 and data.info.train + data.info.eval == 6


def test_split_is_seeded_and_eval_file_is_used(tiny_phi3, tmp_path):
    _, tokenizer = tiny_phi3
    path = write(tmp_path / "a.jsonl", rows_for("alpaca"))
    evals = lambda seed: [
        r.input_ids for r in prepare_data(data_cfg(path, seed=seed, eval_size=2), tokenizer, EOT).eval
    ]  # noqa: E731
    assert evals(1) == evals(1)
    assert len({str(evals(seed)) for seed in range(5)}) > 1  # the seed does choose the held-out samples
    eval_path = write(tmp_path / "e.jsonl", rows_for("sharegpt")[:3])
    data = prepare_data(DataConfig(train=str(path), eval=str(eval_path), cache=False), tokenizer, EOT)
    assert data.info.train == 6 and data.info.eval == 3


def test_cli_train_on_alpaca_with_a_bad_row_skipped(tmp_path, monkeypatch):
    """The real `phinetune train` path: the skip summary is printed in the pre-flight, and training runs."""
    rows = rows_for("alpaca")
    path = tmp_path / "a.jsonl"
    path.write_text(
        "".join(json.dumps(r) + "\n" for r in rows[:3])
        + '{"instruction": "x", "output": 5}\n'
        + "".join(json.dumps(r) + "\n" for r in rows[3:])
    )
    monkeypatch.setenv("PHINETUNE_CACHE", str(tmp_path / "cache"))
    proc = cli_here(
        "train",
        f"data.train={path}",
        "data.skip_bad_rows=true",
        "data.eval_size=1",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.eval_every=2",
        f"output.dir={tmp_path / 'run'}",
        "data.max_length=96",
    )
    assert f"skipped 1 bad row(s): wrong type in 'output' x1 ({path}:4)" in proc.stdout.replace("\n", "")
    assert (tmp_path / "run" / "adapter").exists()


def test_templates_that_trim_content_still_get_exact_masks(tiny_phi3, tmp_path):
    _, tokenizer = tiny_phi3
    trimming = copy.deepcopy(tokenizer)
    trimming.chat_template = tokenizer.chat_template.replace("message['content']", "message['content'] | trim")
    assert trimming.chat_template != tokenizer.chat_template
    path = write(
        tmp_path / "ws.jsonl",
        [{"prompt": "  What has keys?  ", "completion": "  A piano.  \n"}] * 1 + rows_for("prompt_completion"),
    )
    data = prepare_data(data_cfg(path, eval_size=None, eval_fraction=0.0), trimming, EOT)
    assert trained_text(data.train[0], trimming) == "A piano." + EOT


def test_a_template_that_rewrites_content_trains_what_it_renders(tiny_phi3, tmp_path):
    """The rule (data/render.py): the trained tokens are the template's rendering of the reply."""
    _, tokenizer = tiny_phi3
    shouting = copy.deepcopy(tokenizer)
    shouting.chat_template = tokenizer.chat_template.replace("message['content']", "message['content'] | upper")
    path = write(
        tmp_path / "a.jsonl", [{"prompt": "what has keys?", "completion": "a piano."}] + rows_for("prompt_completion")
    )
    data = prepare_data(data_cfg(path, eval_size=None, eval_fraction=0.0), shouting, EOT)
    assert trained_text(data.train[0], shouting) == "A PIANO." + EOT


def test_a_template_that_drops_a_message_is_reported_at_the_row(tiny_phi3, tmp_path):
    from phinetune.errors import DataError
    from phinetune.models.templates import read_template

    _, tokenizer = tiny_phi3
    no_system = copy.deepcopy(tokenizer)
    no_system.chat_template = read_template("phi3-128k.jinja")  # Phi-3-mini-128k's original: no system role
    path = write(
        tmp_path / "a.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"},
                ]
            }
        ]
        + rows_for("messages"),
    )
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}:1: the chat template drops system messages.*data.fold_system=true"
    ):
        prepare_data(data_cfg(path), no_system, EOT)
    data = prepare_data(data_cfg(path, eval_size=None, eval_fraction=0.0, fold_system=True), no_system, EOT)
    first = next(r for r in data.train if r.where.endswith(":1"))
    assert "Be brief.\n\nhi" in first.text and trained_text(first, no_system) == "yo" + EOT


def test_held_out_records_are_the_ones_training_held_out(tiny_phi3, tmp_path):
    """compare and the report take prompts from split_records: it must give training's exact split."""
    from phinetune.data.dataset import split_records

    _, tokenizer = tiny_phi3
    cfg = DataConfig(eval_size=6, cache=False)
    prepared = prepare_data(cfg, tokenizer, "<|end|>")
    train, held, duplicates = split_records(cfg, skip_bad=True)
    assert [r.where for r in train] == [r.where for r in prepared.train_records]
    assert len(held) == 6 and not {r.where for r in held} & {r.where for r in train}
    assert duplicates == prepared.info.duplicates


# one-letter answers and empty-ish replies the readers accept (an empty or whitespace-only turn is refused
# at its row by data/formats.py; render_sample itself handles those too, see tests/test_render.py)
ANSWERS = ["d", "a", "e", ">", "end", "assistant", " d", "d\n", ".", "\u200b", " \n>"]


@pytest.mark.parametrize("spec_key", ["phi3-mini-4k", "phi3-mini-128k", "phi3.5-mini", "phi4-mini", "phi2"])
@pytest.mark.parametrize("source", ["tiny", "real"])
def test_one_letter_answers_file_trains_exactly_answers_and_their_own_eot(spec_key, source, tmp_path):
    """A multiple-choice SFT file through the whole data pipeline, on every Phi template: trained are each
    answer's tokens and its own end-of-turn token, nothing else (expected mask written by hand per template)."""
    from mask_by_hand import expected_labels
    from phinetune.models.specs import SPECS
    from test_render import real_tokenizer, tiny_tokenizer

    spec = SPECS[spec_key]
    tokenizer = tiny_tokenizer(spec_key) if source == "tiny" else real_tokenizer(spec_key)
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}: a, b, c, d or e?"},
                {"role": "assistant", "content": a},
                {"role": "user", "content": a},
                {"role": "assistant", "content": a},
            ]
        }
        for i, a in enumerate(ANSWERS)
    ]
    path = write(tmp_path / "mc.jsonl", rows)
    data = prepare_data(
        data_cfg(path, eval_size=None, eval_fraction=0.0, max_length=4096, dedupe=False), tokenizer, spec.end_of_turn
    )
    assert len(data.train) == len(rows)
    eot_id = tokenizer.convert_tokens_to_ids(spec.end_of_turn)
    for rendered, record in zip(data.train, data.train_records):
        ids, trained = expected_labels(tokenizer, spec.template, record.sample["messages"], "assistant")
        assert rendered.input_ids == ids
        assert [label != IGNORE for label in rendered.labels] == trained, record.sample
        assert [rendered.labels[e] for _, _, e in rendered.turns] == [eot_id, eot_id]
