"""A low-level policy per primitive, from its spec: how often each subtask kind succeeds.

    python benchmarks/eval_primitives.py --trials 200 [--low-level expert] [--noise 0.0] [--json FILE]
    python benchmarks/eval_primitives.py --trials 200 --low-level vla:policies/checkpoints/vla

The trials are agent.envs.eval_primitives.evaluate's (the oracle sets up each situation, the policy
under test executes one subtask); this script builds the policy from its spec and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import write_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from agent.envs.eval_primitives import evaluate
    from agent.specs import make_low_level

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--low-level", default="expert", metavar="SPEC", help="low-level policy spec (default: expert)")
    parser.add_argument("--image-size", type=int, default=128, help="camera resolution a learned policy sees")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--noise", type=float, default=0.0, help="expert action noise std (metres)")
    parser.add_argument("--budget", type=int, default=100, help="steps allowed per subtask")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    low_level = args.low_level
    if low_level != "expert":
        low_level = make_low_level(args.low_level, seed=args.seed, device=args.device, dtype=args.dtype)
    report = evaluate(args.trials, args.noise, args.budget, args.seed, low_level=low_level,
                      image_size=args.image_size, policy_name=args.low_level)
    table = Table(title=f"{report['low_level']} per primitive ({report['wall_time_s']:.0f} s)")
    for col in ("primitive", "trials", "success", "median steps"):
        table.add_column(col, justify="left" if col == "primitive" else "right")
    for kind, s in report["per_primitive"].items():
        table.add_row(kind, str(s["trials"]), f"{100 * s['success_rate']:.1f}%", f"{s['median_steps']}")
    Console().print(table)
    if args.json:
        write_results(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
