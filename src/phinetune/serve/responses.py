"""The two OpenAI response shapes, chat and text completion, each written once.

A formatter turns finished completions into a response body and stream pieces into chunks; the endpoints in
serve/app.py share everything else (queueing, stop strings, errors, usage) and differ only in which one they pass.
"""

from __future__ import annotations

import time
import uuid
from typing import Optional

from phinetune.infer.complete import Completion


def usage(results: list[Completion]) -> dict:
    prompt, done = sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


class TextFormat:
    """/v1/completions: `text` in each choice; a stream repeats the `text_completion` object."""

    id_prefix, object, chunk_object = "cmpl", "text_completion", "text_completion"

    def new_id(self) -> str:
        return f"{self.id_prefix}-{uuid.uuid4().hex}"

    def choice(self, index: int, result: Completion) -> dict:
        return {"index": index, "text": result.text, "finish_reason": result.finish_reason, "logprobs": None}

    def delta(self, text: Optional[str], finish: Optional[str]) -> dict:
        return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}

    def opening(self) -> Optional[dict]:
        """A choice sent before any text (None: nothing)."""
        return None

    def response(self, results: list[Completion], model: str) -> dict:
        return {"id": self.new_id(), "object": self.object, "created": int(time.time()), "model": model,
                "choices": [self.choice(i, r) for i, r in enumerate(results)], "usage": usage(results)}

    def chunk(self, ident: str, model: str, choices: list[dict], **extra) -> dict:
        return {"id": ident, "object": self.chunk_object, "created": int(time.time()), "model": model, "choices": choices, **extra}


class ChatFormat(TextFormat):
    """/v1/chat/completions: an assistant `message` per choice; a stream opens with the role, then content deltas."""

    id_prefix, object, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def choice(self, index: int, result: Completion) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": result.text}, "finish_reason": result.finish_reason, "logprobs": None}

    def delta(self, text: Optional[str], finish: Optional[str]) -> dict:
        return {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish, "logprobs": None}

    def opening(self) -> Optional[dict]:
        return {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}


CHAT, TEXT = ChatFormat(), TextFormat()
