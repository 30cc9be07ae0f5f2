"""GRPO reward functions: the built-ins, dotted-path lookup of your own, and the guarded call.

A reward function scores one completion: `fn(completion: str, answer: str, prompt: list[dict]) -> float`
(it may also take `config`, the run's GRPOConfig; it receives only the arguments it names, or all of
them if it takes **kwargs). Yours are named as `package.module:function`. A function that raises, or
returns something that is not a finite number, stops the run with its name and the sample's file:line.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import string
from collections.abc import Callable

from phinetune.config.schema import GRPOConfig
from phinetune.errors import ConfigError, PhinetuneError

ANSWER = re.compile(r"answer is\s+(.+?)(?:[.!?\n]|$)", re.IGNORECASE)
ARTICLES = {"a", "an", "the"}


def extract_answer(text: str) -> str:
    """The short answer in a reply: what follows 'the answer is' (the riddles' phrasing), else the first sentence."""
    m = ANSWER.search(text)
    core = m.group(1) if m else re.split(r"[.!?\n]", text.strip(), maxsplit=1)[0]
    words = core.lower().translate(str.maketrans("", "", string.punctuation)).split()
    return " ".join(w for w in words if w not in ARTICLES)


def exact_answer(completion: str, answer: str) -> float:
    """1 when the completion's short answer equals the reference's (case, punctuation and articles ignored)."""
    return float(extract_answer(completion) == extract_answer(answer) != "")


def contains_answer(completion: str, answer: str) -> float:
    """1 when the reference's short answer appears anywhere in the completion."""
    ref = extract_answer(answer)
    text = " ".join(
        w for w in completion.lower().translate(str.maketrans("", "", string.punctuation)).split() if w not in ARTICLES
    )
    return float(bool(ref) and f" {ref} " in f" {text} ")


def format_reward(completion: str, config: GRPOConfig) -> float:
    """1 when the completion matches grpo.format_regex."""
    return float(re.search(config.format_regex, completion) is not None)


def length_reward(completion: str, config: GRPOConfig) -> float:
    """1 at grpo.target_length words, falling linearly to 0 at twice (or zero times) that."""
    return max(0.0, 1.0 - abs(len(completion.split()) - config.target_length) / config.target_length)


BUILTIN: dict[str, Callable] = {
    "exact_answer": exact_answer,
    "contains_answer": contains_answer,
    "format": format_reward,
    "length": length_reward,
}


def resolve(name: str) -> Callable:
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" not in name:
        raise ConfigError(
            f"grpo.rewards: '{name}' is neither a built-in ({', '.join(BUILTIN)}) nor a dotted path like mypkg.rewards:score"
        )
    module, attr = name.split(":", 1)
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"grpo.rewards: cannot load '{name}' ({exc}); is its package importable from here?") from None
    if not callable(fn):
        raise ConfigError(f"grpo.rewards: '{name}' is a {type(fn).__name__}, not a function")
    return fn


class Rewards:
    def __init__(self, cfg: GRPOConfig):
        self.names = list(cfg.rewards)
        if not self.names:
            raise ConfigError("grpo.rewards is empty; name at least one reward function, e.g. [exact_answer]")
        self.weights = list(cfg.reward_weights) if cfg.reward_weights is not None else [1.0] * len(self.names)
        if len(self.weights) != len(self.names):
            raise ConfigError(
                f"grpo.reward_weights has {len(self.weights)} weights for {len(self.names)} reward functions"
            )
        self.fns = [resolve(n) for n in self.names]
        self.cfg = cfg

    def score(self, completion: str, answer: str, prompt: list[dict], where: str) -> float:
        context = {"completion": completion, "answer": answer, "prompt": prompt, "config": self.cfg}
        total = 0.0
        for name, fn, w in zip(self.names, self.fns, self.weights):
            total += w * call(name, fn, context, where)
        return total


def call(name: str, fn: Callable, context: dict, where: str) -> float:
    params = inspect.signature(fn).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    args = context if takes_all else {k: v for k, v in context.items() if k in params}
    sample = f"sample {where} (completion {context['completion'][:60]!r})"
    try:
        value = fn(**args)
    except Exception as exc:  # the user's code: any failure is reported the same way
        raise PhinetuneError(f"reward function {name} raised {type(exc).__name__}: {exc} on {sample}") from None
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PhinetuneError(
            f"reward function {name} returned {value!r:.40} on {sample}; a reward must be a finite number"
        )
    return float(value)
