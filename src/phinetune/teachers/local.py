"""A teacher run in-process: a run folder, merged folder, model id or tiny-* name answering with its own chat template."""

from __future__ import annotations

from phinetune.teachers.calls import Call, Counters, OnDone
from phinetune.teachers.config import TeacherConfig
from phinetune.teachers.journal import Entry


class LocalTeacher:
    """Batched generate() with the model's own chat template; a run folder, merged folder, model id or tiny-* name."""

    def __init__(self, cfg: TeacherConfig):
        from phinetune.runs.loading import load_for_inference

        self.cfg = cfg
        self.loaded = load_for_inference(cfg.model, cfg.dtype, cfg.quant)  # a tiny-* name is built once into the cache
        self.counters = Counters()
        self.describe = f"local model {cfg.model}"

    def run(self, calls: list[Call], on_done: OnDone) -> None:
        from phinetune.infer.complete import Sampling, chat_prompt, complete

        groups: dict[tuple, list[Call]] = {}
        for call in calls:  # one generate() per batch needs one sampling setting
            groups.setdefault((call.sampling.max_tokens, call.sampling.temperature, call.sampling.top_p), []).append(
                call
            )
        for group in groups.values():
            sampling = group[0].sampling
            for k in range(0, len(group), self.cfg.batch_size):
                batch = group[k : k + self.cfg.batch_size]
                gen = Sampling(sampling.max_tokens, sampling.temperature, 0, sampling.top_p, seed=batch[0].seed)
                # complete() rather than generate_batch(): the same answers, with whether each stopped or hit max_tokens
                for call, done in zip(
                    batch, complete(self.loaded, [chat_prompt(self.loaded, c.messages) for c in batch], gen)
                ):
                    text = done.text.strip()
                    on_done(
                        call,
                        Entry(call.key, text, self._count(call.messages), self._count(text), 0.0, done.finish_reason),
                    )

    def _count(self, what) -> int:
        tok = self.loaded.tokenizer
        text = (
            what if isinstance(what, str) else tok.apply_chat_template(what, tokenize=False, add_generation_prompt=True)
        )
        return len(tok(text, add_special_tokens=False)["input_ids"])

    def close(self) -> None:
        pass
