"""Interactive chat in the terminal: streams tokens, keeps the conversation, stops at end-of-turn."""

from __future__ import annotations

from typing import Callable, Optional

from phinetune.infer.complete import Sampling, stream_reply
from phinetune.runs.loading import Loaded
from phinetune.progress import console


def chat_loop(loaded: Loaded, sampling: Sampling, system: Optional[str] = None, read: Callable[[str], str] = input) -> None:
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    console.print("[dim]Type a message; /reset clears the conversation, /exit (or Ctrl-D) quits.[/dim]", markup=True)
    while True:
        try:
            text = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history = history[:1] if system else []
            console.print("[dim]conversation cleared" + (" (system prompt kept)" if system else "") + "[/dim]", markup=True)
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        console.print("[bold]phi>[/bold] ", end="", markup=True)
        reply = ""
        for piece in stream_reply(loaded, history, sampling):
            reply += piece
            console.print(piece, end="", markup=False, highlight=False)
        console.print()
        history.append({"role": "assistant", "content": reply.strip()})
