"""Regenerate tests/golden/render/*.json from the real Phi tokenizers in ../shared/realdata.

    python scripts/make_render_golden.py        (PHINETUNE_REALDATA=/path/to/realdata if not ../shared/realdata)

Each fixture holds conversations (one-letter answers, empty-ish replies, template fragments, ...), the
real tokenizer's apply_chat_template ids, the labels written by hand from the template's layout
(tests/mask_by_hand.py, not by data/render.py), and every tokenization render_sample asks for, so
tests/test_render.py replays them on a fresh clone without ../shared. Refuses to write a fixture whose
hand-made labels disagree with render_sample (that is a bug to look at, not a fixture to record).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from mask_by_hand import expected_labels  # noqa: E402
from phinetune.data.render import IGNORE, render_sample  # noqa: E402
from phinetune.models.specs import SPECS  # noqa: E402
from test_render import GOLDEN, REAL, real_tokenizer  # noqa: E402

ANSWERS = ["d", "a", "e", ">", "end", "assistant", "", " ", "\n", "  \n"]


def conversations(spec_key: str) -> list[list[dict]]:
    eot = SPECS[spec_key].end_of_turn
    two_turns = [
        [
            {"role": "user", "content": "Which is right: a, b, c, d or e?"},
            {"role": "assistant", "content": a},
            {"role": "user", "content": "Again >"},
            {"role": "assistant", "content": a},
        ]
        for a in ANSWERS
    ]
    others = [
        [{"role": "user", "content": "d"}, {"role": "assistant", "content": "d"}],  # reply equal to the user message
        [
            {"role": "user", "content": "quote the marker"},
            {"role": "assistant", "content": f"it is {eot} then <|user|>"},
        ],
        [{"role": "user", "content": "数字は?"}, {"role": "assistant", "content": " 四十二 🙂\n"}],
    ]
    if spec_key != "phi3-mini-128k":  # its template has no system role
        others.append(
            [
                {"role": "system", "content": "One letter only."},
                {"role": "user", "content": "a or e?"},
                {"role": "assistant", "content": "e"},
            ]
        )
    return two_turns + others


class Recording:
    """Delegates to the real tokenizer and records every text it tokenizes and every token it converts."""

    def __init__(self, tokenizer):
        self.tokenizer, self.encodings, self.tokens = tokenizer, {}, {}

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        self.encodings[text] = {"ids": list(enc["input_ids"]), "offsets": [list(o) for o in enc["offset_mapping"]]}
        return enc

    def convert_tokens_to_ids(self, token):
        tid = self.tokenizer.convert_tokens_to_ids(token)
        self.tokens[token] = tid
        return tid

    def convert_ids_to_tokens(self, tid):
        token = self.tokenizer.convert_ids_to_tokens(tid)
        self.tokens[token] = tid
        return token


def fixture(spec_key: str) -> dict:
    spec, tokenizer = SPECS[spec_key], real_tokenizer(spec_key)
    rec = Recording(tokenizer)
    cases = []
    for messages in conversations(spec_key):
        ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
        labels = {}
        for policy in ("assistant", "last_assistant", "all"):
            hand_ids, trained = expected_labels(tokenizer, spec.template, messages, policy)
            assert hand_ids == ids
            labels[policy] = [tid if t else IGNORE for tid, t in zip(ids, trained)]
            got = render_sample(rec, {"messages": messages}, 10**6, policy, spec.end_of_turn)
            if got.labels != labels[policy]:
                raise SystemExit(f"{spec_key} {policy}: render_sample disagrees with the hand layout on {messages!r}")
        cases.append({"messages": messages, "ids": ids, "labels": labels})
    rec.convert_tokens_to_ids(spec.end_of_turn)
    return {
        "source": f"{REAL[spec_key][0]} (../shared/realdata)"
        + (f" + {REAL[spec_key][1]}" if REAL[spec_key][1] else ""),
        "chat_template": tokenizer.chat_template,
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "unk_token_id": tokenizer.unk_token_id,
        "eot": spec.end_of_turn,
        "tokens": rec.tokens,
        "cases": cases,
        "encodings": rec.encodings,
    }


def main() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for spec_key in REAL:
        path = GOLDEN / f"{spec_key}.json"
        path.write_text(json.dumps(fixture(spec_key), ensure_ascii=False, indent=None) + "\n")
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
