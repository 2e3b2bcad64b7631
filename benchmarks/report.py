"""How every benchmark ends: its table on the terminal, its numbers as JSON beside the others."""

from __future__ import annotations

import json
from pathlib import Path


def publish(table, results: dict, out: str | Path, width: int = 110) -> int:
    """Print `table` (a rich Table), write `results` to `out` as JSON; the script's exit code."""
    from rich.console import Console

    Console(width=width).print(table)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0
