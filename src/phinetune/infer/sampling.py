"""How a reply is sampled (`Sampling`): its defaults are the command line's, for every verb that generates.

Torch-free, so the CLI takes its defaults from here without importing torch; infer/complete.py applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

from phinetune.errors import PhinetuneError

GREEDY_BELOW = (
    1e-5  # temperatures under this sample as greedy (vLLM's _SAMPLING_EPS): logits / 1e-240 overflow to inf -> NaN
)


@dataclass
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            ("max_new_tokens", "must be >= 1", self.max_new_tokens >= 1),
            ("temperature", "must be >= 0 (0 = greedy)", self.temperature >= 0),
            ("top_k", "must be >= 0 (0 = off)", self.top_k >= 0),
            ("top_p", "must be in (0, 1]", 0 < self.top_p <= 1),
        ]
        for name, rule, ok in checks:
            if not ok:
                raise PhinetuneError(f"{name} {rule} (got {getattr(self, name)})")

    def kwargs(self) -> dict:
        if self.temperature < GREEDY_BELOW:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k or None, "top_p": self.top_p}

    def batch_key(self) -> tuple | None:
        """Requests with the same key can share one batch; a seeded request runs alone (its seed must rule)."""
        return None if self.seed is not None else (self.max_new_tokens, self.temperature, self.top_k, self.top_p)
