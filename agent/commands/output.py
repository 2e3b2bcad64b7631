"""Where the commands print their result tables."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console

LOG_WIDTH = 110  # a table written to a log file or pipe keeps its column headers whole


def table_console() -> Console:
    """The terminal's own width on a terminal; LOG_WIDTH columns when stdout is a file or a pipe
    (rich would fall back to 80 and cut the headers of a wide table)."""
    console = Console()
    return console if console.is_terminal else Console(width=LOG_WIDTH)


@contextlib.contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[str], None]]:
    """A rich progress bar on a terminal; one line per unit of work otherwise (a log file reads it).
    Yields `advance(info)`, called once per unit done."""
    console = Console()
    if console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      TextColumn("{task.fields[info]}"), console=console) as bar:
            task = bar.add_task(label, total=total, info="")
            yield lambda info: bar.update(task, advance=1, info=info)
        return
    count = 0
    started = time.perf_counter()

    def advance(info: str) -> None:
        nonlocal count
        count += 1
        print(f"{label}: {count}/{total} ({time.perf_counter() - started:.0f}s) {info}", flush=True)

    yield advance
