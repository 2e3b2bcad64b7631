"""Where the commands print their result tables."""

from __future__ import annotations

from rich.console import Console

LOG_WIDTH = 110  # a table written to a log file or pipe keeps its column headers whole


def table_console() -> Console:
    """The terminal's own width on a terminal; LOG_WIDTH columns when stdout is a file or a pipe
    (rich would fall back to 80 and cut the headers of a wide table)."""
    console = Console()
    return console if console.is_terminal else Console(width=LOG_WIDTH)
