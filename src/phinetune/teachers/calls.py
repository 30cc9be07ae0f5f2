"""What a teacher is asked and what it reports: one Call per chat request, its answer reported through `OnDone`
as soon as it exists (so the caller can journal it before anything else can go wrong), and the counters a
progress bar shows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from phinetune.errors import PhinetuneError
from phinetune.teachers.config import RequestSampling
from phinetune.teachers.journal import Entry


class TeacherError(PhinetuneError):
    """The teacher refused or kept failing; answers already received are in the journal."""


@dataclass
class Call:
    key: str
    messages: list[dict]
    sampling: RequestSampling
    seed: int  # per-call sampling seed derived from the key: reproducible where the endpoint honours it


@dataclass
class Counters:
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # "429" / "timeout" -> count


OnDone = Callable[[Call, Entry], None]
