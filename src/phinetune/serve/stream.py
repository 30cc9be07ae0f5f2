"""Server-sent events, and holding back streamed text that may be the start of a stop string.

OpenAI streams never contain the stop sequence; since a stop string can arrive split over several
pieces, the last len(longest stop) - 1 characters are held until they can no longer start one.
"""

from __future__ import annotations

import json


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


class StopFilter:
    def __init__(self, stops: list[str]):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.buffer = ""
        self.sent = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Text now safe to send (empty once a stop string was seen)."""
        if self.stopped:
            return ""
        self.buffer += piece
        hits = [self.buffer.find(s) for s in self.stops if s in self.buffer]
        if hits:
            self.stopped = True
            return self._take(min(hits))
        return self._take(max(self.sent, len(self.buffer) - self.hold))

    def flush(self) -> str:
        return "" if self.stopped else self._take(len(self.buffer))

    def _take(self, upto: int) -> str:
        out, self.sent = self.buffer[self.sent : upto], max(self.sent, upto)
        return out
