"""How many of each predicted chunk the VLA should execute before it looks again (n_action_steps).

The same checkpoint with n_action_steps replaced (an inference-only field), each measured per primitive
by `agent.envs.eval_primitives` on the same trials (family block_in_drawer_and_close: pick, put in
drawer, open, close, put down; seed 21). Deterministic: the regression head samples nothing.

    python benchmarks/vla_action_steps.py [--checkpoint policies/checkpoints/vla] [--steps 2 4 7 10] [--trials 25]
Writes benchmarks/results/vla_action_steps.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import publish  # noqa: E402


def main() -> int:
    import torch
    from rich.table import Table

    from agent.envs.eval_primitives import evaluate
    from agent.specs import make_low_level

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="policies/checkpoints/vla")
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 4, 7, 10])
    parser.add_argument("--trials", type=int, default=25)
    parser.add_argument("--family", default="block_in_drawer_and_close")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "vla_action_steps.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict = {"checkpoint": args.checkpoint, "family": args.family, "trials": args.trials, "by_steps": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.steps:
            ckpt = Path(tmp) / f"n{n}"
            shutil.copytree(args.checkpoint, ckpt)
            cfg = json.loads((ckpt / "config.json").read_text())
            cfg["n_action_steps"] = n
            (ckpt / "config.json").write_text(json.dumps(cfg))
            report = evaluate(trials=args.trials, low_level=make_low_level(f"vla:{ckpt}", seed=21),
                              policy_name=f"vla:{ckpt}", families=[args.family], seed=21, log=lambda m: None)
            results["by_steps"][str(n)] = {k: v["success_rate"] for k, v in report["per_primitive"].items() if v["trials"]}
    kinds = list(next(iter(results["by_steps"].values())))
    table = Table(title=f"VLA n_action_steps, {args.trials} trials a primitive ({args.family})")
    table.add_column("executed of 10")
    for k in kinds:
        table.add_column(k, justify="right")
    for n, rates in results["by_steps"].items():
        table.add_row(n, *(f"{100 * rates[k]:.0f}%" for k in kinds))
    return publish(table, results, args.out)


if __name__ == "__main__":
    sys.exit(main())
