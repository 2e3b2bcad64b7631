"""How every benchmark ends: its table on the terminal, its numbers as JSON beside the others."""

from __future__ import annotations

import json
from pathlib import Path


def publish(table, results: dict, out: str | Path, width: int = 110) -> int:
    """Print `table` (a rich Table), write `results` to `out` as JSON; the script's exit code."""
    from rich.console import Console

    Console(width=width).print(table)
    write_results(results, out)
    return 0


def write_results(results: dict, out: str | Path, default=None) -> None:
    """Write `results` to `out` as indented JSON (`default`: json.dumps's, for values it cannot write) and say
    where."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=default) + "\n", encoding="utf-8")
    print(f"wrote {out}")
