"""The two OpenAI response shapes, chat and text completion, each written once.

A formatter turns finished outputs (serve/worker.py's Output: the completion, and the log-probabilities and
echoed prompt when asked for) into a response body and stream pieces into chunks; the endpoints in
serve/app.py share everything else (queueing, stop strings, errors, usage) and differ only in which one they
pass. New content in a chat answer (tool calls, say) is a change to `ChatFormat.message` and `delta` alone.
"""

from __future__ import annotations

import time
import uuid

from phinetune.serve.logprobs import chat_logprobs, completion_logprobs
from phinetune.serve.worker import Output


def usage(outputs: list[Output], n: int = 1) -> dict:
    """Token counts; with n choices per prompt the prompt is counted once, as OpenAI does."""
    prompt = sum(o.completion.prompt_tokens for o in outputs[:: max(n, 1)])
    done = sum(o.completion.completion_tokens for o in outputs)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


class TextFormat:
    """/v1/completions: `text` in each choice (after the prompt with echo); a stream repeats the `text_completion` object."""

    id_prefix, object, chunk_object = "cmpl", "text_completion", "text_completion"

    def new_id(self) -> str:
        return f"{self.id_prefix}-{uuid.uuid4().hex}"

    def choice(self, index: int, out: Output) -> dict:
        result = out.completion
        return {
            "index": index,
            "text": (out.prompt_text or "") + result.text,
            "finish_reason": result.finish_reason,
            "logprobs": completion_logprobs(out.logprobs) if out.logprobs is not None else None,
        }

    def delta(self, text: str | None, finish: str | None) -> dict:
        return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}

    def opening(self) -> dict | None:
        """A choice sent before any text (None: nothing)."""
        return None

    def response(self, outputs: list[Output], model: str, n: int = 1) -> dict:
        return {
            "id": self.new_id(),
            "object": self.object,
            "created": int(time.time()),
            "model": model,
            "choices": [self.choice(i, o) for i, o in enumerate(outputs)],
            "usage": usage(outputs, n),
        }

    def chunk(self, ident: str, model: str, choices: list[dict], **extra) -> dict:
        return {
            "id": ident,
            "object": self.chunk_object,
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            **extra,
        }


class ChatFormat(TextFormat):
    """/v1/chat/completions: an assistant `message` per choice; a stream opens with the role, then content deltas."""

    id_prefix, object, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def message(self, out: Output) -> dict:
        return {"role": "assistant", "content": out.completion.text}

    def choice(self, index: int, out: Output) -> dict:
        return {
            "index": index,
            "message": self.message(out),
            "finish_reason": out.completion.finish_reason,
            "logprobs": chat_logprobs(out.logprobs) if out.logprobs is not None else None,
        }

    def delta(self, text: str | None, finish: str | None) -> dict:
        return {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish, "logprobs": None}

    def opening(self) -> dict | None:
        return {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}


CHAT, TEXT = ChatFormat(), TextFormat()
