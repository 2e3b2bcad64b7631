"""The VLA's two action heads on the same data and budget, compared where it matters: closed loop.

Trains the `small` VLA twice from scratch with identical settings except the head ("regression": L1
on the chunk; "flow": pi0's flow matching, 10 Euler steps), reusing one run's cached tensors, then
measures each per primitive with `agent.envs.eval_primitives` (the oracle sets up each situation).

    python benchmarks/vla_heads.py --data-cache runs/vla_small --steps 2000 --trials 50
Writes benchmarks/results/vla_heads.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import publish  # noqa: E402

HEADS = ("regression", "flow")


def main() -> int:
    from rich.table import Table

    from agent.envs.eval_primitives import evaluate
    from agent.specs import make_low_level
    from agent.training.vla_trainer import VlaTrainSettings, train_vla
    from policies.grammar import KINDS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-cache", required=True, help="an earlier `hivla train --model vla` --out on the data")
    parser.add_argument("--data", nargs="+", default=["runs/vla_data"])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=50, help="closed-loop trials per primitive per head")
    parser.add_argument("--workdir", default="runs/vla_heads")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "vla_heads.json"))
    args = parser.parse_args()

    results: dict = {"steps": args.steps, "trials_per_primitive": args.trials, "heads": {}}
    for head in HEADS:
        out = Path(args.workdir) / head
        settings = VlaTrainSettings(data=args.data, out=str(out), steps=args.steps, eval_every=args.steps,
                                    closed_loop_every=0, data_cache=args.data_cache, overrides={"head": head},
                                    resume=(out / "trainer_state.json").is_file())
        summary = train_vla(settings)
        t0 = time.perf_counter()
        report = evaluate(trials=args.trials, seed=5, low_level=make_low_level(f"vla:{out}", seed=5),
                          policy_name=f"vla:{out}")
        results["heads"][head] = {
            "train_time_s": summary["train_time_s"], "samples_per_s": summary["samples_per_s"],
            "held_out": summary["final_eval"], "eval_time_s": time.perf_counter() - t0,
            "per_primitive": {k: v["success_rate"] for k, v in report["per_primitive"].items()},
        }
        rates = results["heads"][head]["per_primitive"]
        results["heads"][head]["mean_success"] = sum(rates.values()) / len(rates)

    table = Table(title=f"VLA heads, {args.steps} steps each, {args.trials} closed-loop trials a primitive")
    table.add_column("primitive")
    for head in HEADS:
        table.add_column(head, justify="right")
    for kind in (*KINDS, "mean"):
        key = lambda h: results["heads"][h]["mean_success"] if kind == "mean" else results["heads"][h]["per_primitive"][kind]  # noqa: E731
        table.add_row(kind, *(f"{100 * key(h):.0f}%" for h in HEADS))
    table.add_row("train samples/s", *(f"{results['heads'][h]['samples_per_s']:.0f}" for h in HEADS))
    table.add_row("held-out R² dx/dy/dz", *("/".join(f"{results['heads'][h]['held_out'].get(f'r2_{d}', float('nan')):.2f}"
                                                     for d in ("dx", "dy", "dz")) for h in HEADS))
    return publish(table, results, args.out)


if __name__ == "__main__":
    sys.exit(main())
