"""Generation with the model's chat template, stopping at its end-of-turn token(s).

`complete` is the one generation path: `generate` (CLI), `compare`, `chat` and `serve` all go through it,
so batching, sampling, stop tokens and token counting behave the same everywhere.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from threading import Thread

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer, TextStreamer

from phinetune.data.normalize import TOOL_CALL, for_template
from phinetune.infer.sampling import Sampling
from phinetune.runs.loading import Loaded

# Weight dtypes whose one-row matmuls (batch-1 decode) run faster in PyTorch's own GEMV than in oneDNN on CPU.
# Profiled on a 2-core AMD EPYC (Zen 4, avx512_bf16), torch 2.13, Phi-3-mini-width bf16 weights, one thread,
# CPU time per call: oneDNN reads 18-19 GB/s, the native bf16 GEMV (fp32 accumulation) 27-28 GB/s, against 33 GB/s
# for a plain tensor sum. With 2+ rows oneDNN wins again (20 vs 15 GB/s at 2 rows), and prefill is a real GEMM.
NATIVE_GEMV_DTYPES = (torch.bfloat16, torch.float16)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int  # generated tokens, the stop token included
    finish_reason: str  # "stop" (end-of-turn token or stop string) or "length"
    token_ids: list[int] = field(default_factory=list)  # the generated tokens behind `text`, and the stop token if any


def chat_prompt(loaded: Loaded, messages: list[dict]) -> str:
    """The prompt for a conversation, written as in training (data/normalize.py: the spec's default system prompt)."""
    messages = for_template({"messages": messages}, loaded.spec)["messages"]
    return loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def decode(loaded: Loaded, ids: list[int]) -> str:
    """Text of generated ids without special tokens, except the markers a reply is parsed by (reasoning tags,
    Phi-4-mini's tool-call markers), which some tokenizers register as special and would otherwise vanish."""
    tok = loaded.tokenizer
    keep = {t for t in (*loaded.spec.reasoning_tags, *TOOL_CALL) if t in tok.all_special_tokens}
    if not keep:
        return tok.decode(ids, skip_special_tokens=True)
    drop = set(tok.all_special_ids) - set(tok.convert_tokens_to_ids(sorted(keep)))
    return tok.decode([i for i in ids if i not in drop], skip_special_tokens=False)


def _generate_kwargs(loaded: Loaded, sampling: Sampling) -> dict:
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else loaded.tokenizer.eos_token_id
    return dict(
        max_new_tokens=sampling.max_new_tokens,
        eos_token_id=loaded.stop_ids or None,
        pad_token_id=pad,
        **sampling.kwargs(),
    )


class _Cancelled(StoppingCriteria):
    """Ends generation early when the caller gives up (a client that disconnected mid-stream)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def complete(
    loaded: Loaded,
    prompts: Sequence[str | list[int]],
    sampling: Sampling,
    stop: Sequence[str] = (),
    streamer=None,
    cancel: threading.Event | None = None,
) -> list[Completion]:
    """Continue already-templated prompt texts (or token ids), as one left-padded batch (every prompt ends where generation starts)."""
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    tok = loaded.tokenizer
    tok.padding_side = "left"
    enc = encode_prompts(tok, prompts).to(_device(loaded.model))
    extra = dict(stop_strings=list(stop), tokenizer=tok) if stop else {}
    if cancel is not None:
        extra["stopping_criteria"] = StoppingCriteriaList([_Cancelled(cancel)])
    with decode_kernels(loaded.model, enc["input_ids"].shape[0]):
        out = loaded.model.generate(**enc, **_generate_kwargs(loaded, sampling), streamer=streamer, **extra)
    new = out[:, enc["input_ids"].shape[1] :]
    prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
    return [_finish(loaded, row, n, stop) for row, n in zip(new.tolist(), prompt_lens)]


@contextmanager
def decode_kernels(model, batch: int):
    """During a batch-1 generation on CPU in bf16/fp16, run each one-token forward (a decode step: every matmul
    has one row) with oneDNN off, so torch's native GEMV reads the weights; prefill keeps oneDNN's GEMM.

    Why: a decode step reads every weight once and does little else, so its speed is the GEMV's bandwidth;
    oneDNN's bf16 path reaches only about 55% of the memory bandwidth there, the native one about 80%
    (NATIVE_GEMV_DTYPES). The switch is made in a hook on the input embedding, which every forward calls
    first with its token ids, so it works under `generate` (and PEFT's wrapper) without touching their loop;
    only the summation order inside fp32 accumulators changes (at Phi-3-mini width the logits moved by about
    1% of their scale), and greedy tokens matched plain `generate` in every comparison (tests/test_complete.py).
    mkldnn's flag is process-wide: generation owns the model in one thread (serve/worker.py), and the flag is
    restored on the way out, also on errors."""
    embed = model.get_input_embeddings()
    if not uses_native_gemv(model, batch):
        yield
        return
    prior = torch.backends.mkldnn.enabled

    def choose(_module, args):
        if args:  # the token ids (every Phi model passes them positionally)
            torch.backends.mkldnn.enabled = prior and args[0].numel() != 1

    handle = embed.register_forward_pre_hook(choose)
    try:
        yield
    finally:
        handle.remove()
        torch.backends.mkldnn.enabled = prior


def uses_native_gemv(model, batch: int) -> bool:
    """Whether `decode_kernels` switches this generation's decode steps to torch's native GEMV."""
    weight = model.get_input_embeddings().weight
    return batch == 1 and weight.device.type == "cpu" and weight.dtype in NATIVE_GEMV_DTYPES and not _quantized(model)


def _quantized(model) -> bool:
    """4-bit weights (bitsandbytes packs them as uint8) take their own kernels: the GEMV choice was profiled on bf16."""
    return any(p.dtype == torch.uint8 for p in model.parameters())


def encode_prompts(tok, prompts: Sequence[str | list[int]]):
    """Left-padded input_ids and attention_mask; a prompt given as token ids is used as it is (what lm-eval sends)."""
    if all(isinstance(p, str) for p in prompts):
        return tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    ids = [tok(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p) for p in prompts]
    return tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")


def _finish(loaded: Loaded, row: list[int], prompt_tokens: int, stop: Sequence[str]) -> Completion:
    """Cut a generated row at its first stop token (what follows is padding) and at the first stop string."""
    cut = next((i for i, t in enumerate(row) if t in set(loaded.stop_ids)), None)
    kept = row if cut is None else row[:cut]
    text = decode(loaded, kept)
    reason = "length" if cut is None else "stop"
    hits = [text.index(s) for s in stop if s in text]
    if hits:
        text, reason = text[: min(hits)], "stop"
        while kept and len(loaded.tokenizer.decode(kept, skip_special_tokens=True)) > len(text):
            kept = kept[:-1]  # the tokens behind the text that is kept
    elif cut is not None:
        kept = row[
            : cut + 1
        ]  # the stop token was generated too (its logprob is what lm-eval's echo scoring drops last)
    return Completion(text, int(prompt_tokens), len(row) if cut is None else cut + 1, reason, list(kept))


def generate_batch(loaded: Loaded, conversations: list[list[dict]], sampling: Sampling) -> list[str]:
    """Answer a batch of conversations with the chat template."""
    results = complete(loaded, [chat_prompt(loaded, c) for c in conversations], sampling)
    return [r.text.strip() for r in results]


class CallbackStreamer(TextStreamer):
    """A TextStreamer that hands each finished piece of text to a callback instead of printing it."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_text(text)


STREAM_THREAD = "phinetune-stream"  # the thread that generates a streamed reply


def stream_reply(loaded: Loaded, messages: list[dict], sampling: Sampling) -> Iterator[str]:
    """Yield text pieces as they are generated (for the terminal chat).

    Generation runs in a second thread that feeds the streamer. However the caller stops reading (Ctrl-C raises
    KeyboardInterrupt in the main thread, or the generator is closed), generation is cancelled at its next token
    and the thread is joined before this returns: a process that exits while that thread is still inside torch
    aborts ("terminate called without an active exception", exit 134) instead of ending cleanly."""
    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure: list[BaseException] = []
    cancel = threading.Event()

    def work() -> None:
        try:
            complete(loaded, [chat_prompt(loaded, messages)], sampling, streamer=streamer, cancel=cancel)
        except BaseException as exc:  # surface it in the caller's thread instead of hanging the iterator
            failure.append(exc)
            streamer.end()

    thread = Thread(target=work, name=STREAM_THREAD, daemon=True)
    thread.start()
    try:
        yield from streamer
    finally:
        cancel.set()
        join_through_interrupts(thread)
    if failure:
        raise failure[0]


def join_through_interrupts(thread: Thread) -> None:
    """Wait for `thread` even when Ctrl-C is pressed again meanwhile (the thread has been told to stop)."""
    while thread.is_alive():
        try:
            thread.join()
        except KeyboardInterrupt:
            continue


def _device(model) -> torch.device:
    return next(model.parameters()).device
