"""Packing and batching with no attention across sample boundaries.

Every row carries `position_ids` that restart at 0 for each sample, and no attention_mask. Transformers
(v5) turns such position ids into a block-diagonal causal mask on every backend (sdpa, eager, flex) and
into varlen boundaries for flash-attention, so packed samples never attend to each other. Padding is
appended as its own block, so real tokens never see it either (and it carries no labels).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from phinetune.data.render import IGNORE, Rendered


@dataclass
class Row:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def _row(samples: list[Rendered]) -> Row:
    ids, labels, pos = [], [], []
    for s in samples:
        ids += s.input_ids
        # The first token of a sample is never a target: it would be "predicted" from the previous
        # sample's last token, which is exactly the cross-sample leakage packing must avoid.
        labels += [IGNORE] + s.labels[1:]
        pos += list(range(len(s.input_ids)))
    return Row(ids, labels, pos)


def pack(samples: list[Rendered], max_length: int) -> list[Row]:
    """First-fit-decreasing bin packing of whole samples into rows of at most max_length tokens."""
    bins: list[list[Rendered]] = []
    space: list[int] = []
    for s in sorted(samples, key=lambda s: -len(s.input_ids)):
        for i, free in enumerate(space):
            if len(s.input_ids) <= free:
                bins[i].append(s)
                space[i] -= len(s.input_ids)
                break
        else:
            bins.append([s])
            space.append(max_length - len(s.input_ids))
    return [_row(b) for b in bins]


def unpacked(samples: list[Rendered]) -> list[Row]:
    return [_row([s]) for s in samples]


def make_rows(samples: list[Rendered], max_length: int, packing: bool) -> list[Row]:
    return pack(samples, max_length) if packing else unpacked(samples)


def collate(rows: list[Row], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids, labels, pos = [], [], []
    for r in rows:
        n = width - len(r)
        ids.append(r.input_ids + [pad_id] * n)
        labels.append(r.labels + [IGNORE] * n)
        pos.append(r.position_ids + list(range(n)))
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(pos, dtype=torch.long),
        "n_real": torch.tensor(sum(len(r) for r in rows)),
    }


def batches(rows: list[Row], batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[list[Row]]:
    """Deterministic batch order for (seed, epoch): resuming replays the exact same order."""
    order = list(range(len(rows)))
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [[rows[i] for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]
