"""How weights are loaded, as a user names it: the dtype (in any common spelling) and the quantization.

Torch-free, so the command line offers these choices, with their defaults, without importing torch;
models/loading.py maps the names onto torch dtypes.
"""

from __future__ import annotations

from dataclasses import dataclass

from phinetune.errors import ConfigError

DTYPE_NAMES = ("bf16", "fp16", "fp32")
# The other spellings people type for them (torch's names, a config.json's torch_dtype, `half`, `float`).
DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}
DTYPE_CHOICES = "auto, bf16 (bfloat16), fp16 (float16, half) or fp32 (float32, float)"
# Every accepted spelling, in the order DTYPE_CHOICES reads them (the command line's choices)
DTYPE_SPELLINGS = (
    "auto",
    *(spelling for name in DTYPE_NAMES for spelling in (name, *[a for a, n in DTYPE_ALIASES.items() if n == name])),
)
QUANTS = ("none", "nf4")


def dtype_name(requested: str) -> str:
    """auto, bf16, fp16 or fp32, from any common spelling of them; anything else is refused, listing the choices."""
    name = str(requested).strip().lower()
    name = DTYPE_ALIASES.get(name, name)
    if name != "auto" and name not in DTYPE_NAMES:
        raise ConfigError(f"dtype '{requested}' is not one of {DTYPE_CHOICES}")
    return name


@dataclass(frozen=True)
class LoadOptions:
    """How to load a target for inference (the --dtype/--quant options every inference verb has)."""

    dtype: str = "auto"  # auto, bf16, fp16 or fp32
    quant: str = "none"  # none or nf4
