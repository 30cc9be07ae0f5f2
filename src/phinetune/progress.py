"""Progress bars and console output shared by every long step (rich)."""

from __future__ import annotations

import os
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
console = Console(stderr=False, highlight=False)


def quiet() -> bool:
    return os.environ.get("PHINETUNE_QUIET") == "1"


def progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=quiet(), transient=False)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    items = list(items) if total is None else items
    with progress() as bar:
        task = bar.add_task(description, total=total if total is not None else len(items), info="")
        for item in items:
            yield item
            bar.advance(task)
