"""Generation with the model's chat template, stopping at its end-of-turn token(s)."""

from __future__ import annotations

from dataclasses import dataclass
from threading import Thread
from typing import Iterator, Optional

import torch
from transformers import TextIteratorStreamer

from phinetune.infer.loading import Loaded


@dataclass
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: Optional[int] = None

    def kwargs(self) -> dict:
        if self.temperature <= 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k or None, "top_p": self.top_p}


def chat_prompt(loaded: Loaded, messages: list[dict]) -> str:
    return loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _generate_kwargs(loaded: Loaded, sampling: Sampling) -> dict:
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else loaded.tokenizer.eos_token_id
    return dict(max_new_tokens=sampling.max_new_tokens, eos_token_id=loaded.stop_ids or None, pad_token_id=pad, **sampling.kwargs())


@torch.no_grad()
def generate_batch(loaded: Loaded, conversations: list[list[dict]], sampling: Sampling) -> list[str]:
    """Answer a batch of conversations (left-padded so every prompt ends where generation starts)."""
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    tok = loaded.tokenizer
    tok.padding_side = "left"
    prompts = [chat_prompt(loaded, c) for c in conversations]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(_device(loaded.model))
    out = loaded.model.generate(**enc, **_generate_kwargs(loaded, sampling))
    new = out[:, enc["input_ids"].shape[1]:]
    return [tok.decode(row, skip_special_tokens=True).strip() for row in new]


def stream_reply(loaded: Loaded, messages: list[dict], sampling: Sampling) -> Iterator[str]:
    """Yield text pieces as they are generated (for chat and SSE)."""
    tok = loaded.tokenizer
    enc = tok(chat_prompt(loaded, messages), return_tensors="pt", add_special_tokens=False).to(_device(loaded.model))
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(**enc, streamer=streamer, **_generate_kwargs(loaded, sampling))
    thread = Thread(target=loaded.model.generate, kwargs=kwargs, daemon=True)
    thread.start()
    yield from streamer
    thread.join()


def _device(model) -> torch.device:
    return next(model.parameters()).device
