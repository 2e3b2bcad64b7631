"""A grounded plan's latency, constrained and jump-forward against free decoding, on the shipped planner.

Side by side in one run on the same frames (round-robin: one call of each, then again): the whole
plan as the loop asks for it (the read-out reads both cameras, its scene line is forced, then
"So: <subtask>"), decoded
  grammar + jump   the plan grammar masks the logits and forced spans go into the cache in one pass
                   (the shipped path, policies/pi05/constrained.py)
  grammar, token   the same grammar, every token its own forward pass
  free             no grammar: the line forced token by token, the rest greedy
and, for each, the share of plans that parse and name only what their line listed
(policies.plan_grammar.plan_is_allowed). Frames are rendered fresh from the simulator (base suite,
`--seed`), so nothing here depends on recorded data.

    python benchmarks/grounded_plan_speed.py [--checkpoint policies/checkpoints/grounded] [--frames 30] [--threads 1]
Writes benchmarks/results/grounded_plan_speed.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("MUJOCO_GL", "egl")

from benchmarks.report import publish  # noqa: E402
from agent.cli import quiet_openmp  # noqa: E402

quiet_openmp()

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "grounded_plan_speed.json"


def frames(n: int, seed: int, image_size: int = 128) -> list:
    """`n` observations of the base suite's families, a fresh scene each."""
    from agent.envs import SUITES, make_env
    from policies.types import Observation

    env = make_env(suite="base", image_size=image_size, seed=seed)
    families = SUITES["base"]
    out = []
    for i in range(n):
        obs, _ = env.reset(seed=seed + i, options={"family": families[i % len(families)]})
        out.append(Observation(images=obs["images"], state=obs["state"], task=obs["task"], time=0.0))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(Path(__file__).resolve().parent.parent / "policies/checkpoints/grounded"))
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--seed", type=int, default=950000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from rich.table import Table

    from policies.pi05.policy import decode_grounded, load_pi05
    from policies.plan_grammar import plan_is_allowed
    from policies.planning import build_planner_context
    from policies.types import PlanContext

    policy = load_pi05(args.checkpoint)
    if not policy.grounded:
        raise SystemExit(f"{args.checkpoint} is not a grounded planner (preset grounded)")
    model, processor = policy.model, policy.processor
    observations = frames(args.frames, args.seed)

    def decoder(grammar: bool, jump: bool):
        def plan(obs):
            ctx = build_planner_context(PlanContext(task=obs.task))
            ids, mask = policy._tensor(processor.planner_context_ids(ctx), policy.cfg.max_context_tokens)
            images, prefix, prefix_mask = policy._base(obs)
            with torch.inference_mode():
                return decode_grounded(model, processor, images, prefix, prefix_mask, ids, mask, [obs.task],
                                       grammar=grammar, jump=jump)[0][0]
        return plan

    ways = {"grammar + jump": decoder(True, True), "grammar, token by token": decoder(True, False),
            "free": decoder(False, True)}
    times = {k: [] for k in ways}
    allowed = {k: [] for k in ways}
    for obs in observations:
        for name, plan in ways.items():  # round-robin: a load change hits every way alike
            t0 = time.perf_counter()
            text = plan(obs)
            times[name].append(time.perf_counter() - t0)
            allowed[name].append(plan_is_allowed(text))
    free = statistics.median(times["free"])
    results = {"checkpoint": args.checkpoint, "frames": args.frames, "threads": args.threads, "ways": {}}
    table = Table(title=f"grounded plan, {args.frames} fresh scenes, {args.threads} thread(s), round-robin")
    for col in ("decoding", "median ms", "p90 ms", "vs free", "plans allowed"):
        table.add_column(col, justify="right" if col != "decoding" else "left")
    for name in ways:
        med = statistics.median(times[name])
        p90 = sorted(times[name])[int(0.9 * (len(times[name]) - 1))]
        share = sum(allowed[name]) / len(allowed[name])
        results["ways"][name] = {"median_ms": 1000 * med, "p90_ms": 1000 * p90, "speedup_vs_free": free / med,
                                 "plans_allowed": share}
        table.add_row(name, f"{1000 * med:.1f}", f"{1000 * p90:.1f}", f"{free / med:.2f}x", f"{100 * share:.0f}%")
    return publish(table, results, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
