"""The two answer shapes, chat and (legacy) text completion, as two small formatters with the same methods.

The endpoints and the streaming loop only call these, so a new kind of content in an answer (tool calls,
say) is a change to `ChatFormat.message` and `ChatFormat.delta` alone.
"""

from __future__ import annotations

import time
import uuid
from typing import Optional

from phinetune.serve.logprobs import chat_logprobs, completion_logprobs
from phinetune.serve.worker import Output


def usage(outputs: list[Output], n: int = 1) -> dict:
    """Token counts; with n choices per prompt the prompt is counted once, as OpenAI does."""
    prompt = sum(o.completion.prompt_tokens for o in outputs[::max(n, 1)])
    done = sum(o.completion.completion_tokens for o in outputs)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


class _Format:
    object: str
    chunk_object: str
    prefix: str

    def new_id(self) -> str:
        return f"{self.prefix}-{uuid.uuid4().hex}"

    def response(self, outputs: list[Output], model: str, n: int = 1) -> dict:
        return {"id": self.new_id(), "object": self.object, "created": int(time.time()), "model": model,
                "choices": [self.choice(i, o) for i, o in enumerate(outputs)], "usage": usage(outputs, n)}

    def chunk(self, ident: str, model: str, choice: Optional[dict], usage_: Optional[dict] = None) -> dict:
        body = {"id": ident, "object": self.chunk_object, "created": int(time.time()), "model": model,
                "choices": [choice] if choice else []}
        return body | ({"usage": usage_} if usage_ is not None else {})

    def choice(self, index: int, out: Output) -> dict:
        raise NotImplementedError

    def delta(self, text: Optional[str], finish: Optional[str], first: bool = False) -> Optional[dict]:
        """One streamed choice; None when there is nothing to send."""
        raise NotImplementedError


class ChatFormat(_Format):
    object, chunk_object, prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def message(self, out: Output) -> dict:
        return {"role": "assistant", "content": out.completion.text}

    def choice(self, index: int, out: Output) -> dict:
        return {"index": index, "message": self.message(out), "finish_reason": out.completion.finish_reason,
                "logprobs": chat_logprobs(out.logprobs) if out.logprobs is not None else None}

    def delta(self, text, finish, first=False):
        delta = ({"role": "assistant", "content": ""} if first else {}) | ({"content": text} if text else {})
        if not delta and finish is None:
            return None
        return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}


class CompletionFormat(_Format):
    object, chunk_object, prefix = "text_completion", "text_completion", "cmpl"

    def choice(self, index: int, out: Output) -> dict:
        text = (out.prompt_text or "") + out.completion.text
        return {"index": index, "text": text, "finish_reason": out.completion.finish_reason,
                "logprobs": completion_logprobs(out.logprobs) if out.logprobs is not None else None}

    def delta(self, text, finish, first=False):
        if first or (not text and finish is None):
            return None  # completions streams have no opening role chunk
        return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}


CHAT, COMPLETION = ChatFormat(), CompletionFormat()
