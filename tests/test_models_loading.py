"""models/loading.py: dtype names as people type them, and the spec's refusals applied to every spelling."""

from __future__ import annotations

import pytest
import torch

from phinetune.errors import ConfigError
from phinetune.models.loading import choose_dtype, dtype_name
from phinetune.models.specs import SPECS

SPELLINGS = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "BF16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_every_common_spelling_names_its_dtype(spelling):
    plan = choose_dtype(spelling, SPECS["phi3.5-mini"])
    assert plan.dtype == SPELLINGS[spelling] and plan.name in ("bf16", "fp16", "fp32")


@pytest.mark.parametrize("spelling", ["fp16", "float16", "half"])
def test_a_refused_dtype_is_refused_in_every_spelling(spelling):
    with pytest.raises(ConfigError, match="model.dtype=fp16 is refused for phi2"):
        choose_dtype(spelling, SPECS["phi2"])


@pytest.mark.parametrize("typo", ["bf17", "int8", "fp8", ""])
def test_anything_else_lists_the_choices(typo):
    with pytest.raises(
        ConfigError,
        match=rf"^dtype '{typo}' is not one of auto, bf16 \(bfloat16\), fp16 \(float16, half\) or fp32 \(float32, float\)$",
    ):
        dtype_name(typo)
