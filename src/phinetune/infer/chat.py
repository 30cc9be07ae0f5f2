"""Interactive chat in the terminal: streams tokens, keeps the conversation, stops at end-of-turn."""

from __future__ import annotations

from collections.abc import Callable

from phinetune.data.reasoning import REASONING_VIEWS, split_reasoning
from phinetune.errors import PhinetuneError
from phinetune.infer.complete import Sampling, stream_reply
from phinetune.models.load_options import LoadOptions
from phinetune.progress import console
from phinetune.runs.loading import Loaded, load_for_inference


def chat_loop(
    loaded: Loaded,
    sampling: Sampling,
    system: str | None = None,
    read: Callable[[str], str] = input,
    reasoning: str = "show",
) -> None:
    """`reasoning=hide` prints only what follows a reply's </think>; the history keeps the answer only either way
    (earlier traces are not fed back, as reasoning models are prompted)."""
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    console.print("[dim]Type a message; /help lists the commands, /exit (or Ctrl-D) quits.[/dim]", markup=True)
    while True:
        try:
            text = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if text.startswith("/") and not text.startswith("//"):  # a command is answered here, never sent to the model
            command = text.split()[0].lower()
            if command in ("/exit", "/quit"):
                return
            if command == "/reset":
                history = history[:1] if system else []
            answer_command(command, bool(system))
            continue
        text = text.removeprefix("/")  # `//etc/hosts` sends `/etc/hosts`
        if not text:
            continue
        history.append({"role": "user", "content": text})
        console.print("[bold]phi>[/bold] ", end="", markup=True)
        reply = _stream(loaded, history, sampling, reasoning)
        history.append({"role": "assistant", "content": split_reasoning(reply, loaded.spec.reasoning_tags)[1].strip()})


def _stream(loaded: Loaded, history: list[dict], sampling: Sampling, reasoning: str) -> str:
    """Print the reply as it streams and return it. Ctrl-C stops the reply (what was shown stays in the
    conversation) and comes back to the prompt; stream_reply has stopped generation by the time it returns."""
    reply, shown = "", 0
    pieces = stream_reply(loaded, history, sampling)
    try:
        for piece in pieces:
            reply += piece
            visible = reply if reasoning == "show" else _after_trace(reply, loaded.spec.reasoning_tags)
            console.print(visible[shown:], end="", markup=False, highlight=False)
            shown = len(visible)
        console.print()
    except KeyboardInterrupt:
        pieces.close()  # cancels generation and waits for its thread, also when the interrupt came between pieces
        console.print("\n[dim](reply stopped)[/dim]", markup=True)
    return reply


COMMANDS = {
    "/help": "list these commands",
    "/reset": "clear the conversation (a system prompt is kept)",
    "/exit": "quit (also /quit or Ctrl-D)",
}


def answer_command(command: str, system: bool) -> None:
    """What a chat command prints (/exit and /quit return before): /reset's confirmation, /help's list, or an
    unknown command named with the way to send a message that starts with '/'."""
    if command == "/reset":
        console.print("[dim]conversation cleared" + (" (system prompt kept)" if system else "") + "[/dim]", markup=True)
    elif command == "/help":
        for name, what in COMMANDS.items():
            console.print(f"  {name:<7} {what}", markup=False, highlight=False)
        console.print(
            "  A message that starts with / is sent when written with // (//etc/hosts sends /etc/hosts).",
            markup=False,
            highlight=False,
        )
    else:
        console.print(
            f"unknown command {command}: not sent to the model; the commands are {', '.join(COMMANDS)} "
            "(start a message with // to send one that begins with /)",
            markup=False,
            highlight=False,
        )


def _after_trace(reply: str, tags: tuple[str, str]) -> str:
    """What to show of a reply so far with the trace hidden: nothing while a trace may be open."""
    if reply.lstrip().startswith(tags[0]) or (tags[0].startswith(reply.lstrip()) and reply.strip()):
        close = reply.find(tags[1])
        return "" if close < 0 else reply[close + len(tags[1]) :].lstrip()
    return reply


def run_chat(
    target: str,
    sampling: Sampling,
    load: LoadOptions = LoadOptions(),
    checkpoint: str | None = None,
    system: str | None = None,
    reasoning: str = "show",
) -> None:
    """`phinetune chat`: load `target` (a run folder, merged folder or model id), then `chat_loop`."""
    if reasoning not in REASONING_VIEWS:
        raise PhinetuneError(f"--reasoning must be {' or '.join(REASONING_VIEWS)} (got {reasoning})")
    chat_loop(
        load_for_inference(target, load.dtype, load.quant, checkpoint=checkpoint), sampling, system, reasoning=reasoning
    )
