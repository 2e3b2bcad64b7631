"""Planner frames from recorded closed-loop runs, every object labelled by the replayed simulator (issue
33's ceiling): what a read-out fine-tune would have if, instead of a fact about the one object a person
saw misread, every object on every plan frame of the same episodes were labelled.

    python benchmarks/closed_loop_frames.py runs/facts_round_v5/sessions --out runs/closed_loop_frames_v5
    hivla finetune --readout-facts --fact-share 0 --base-data <the usual sets> runs/closed_loop_frames_v5 ...

Writes a planner-frames directory (agent/training/planner_frames.py's format) holding what a read-out
fine-tune reads: each plan frame's images and robot state, its task, the simulator's scene facts. It
holds no plan label: it is for the read-out (`--readout-facts --base-data`), not for plan training or
benchmarks/offline_eval.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.closed_loop_reading import recorded_frames  # noqa: E402


def main(argv=None) -> int:
    import numpy as np
    from safetensors.numpy import save_file

    from agent.training.planner_frames import shard_name, write_manifest
    from policies.pi05.processor import stack_cameras

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sessions", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--cameras", nargs="+", default=["front", "wrist"])
    p.add_argument("--suite", default="base")
    p.add_argument("--truth-cache", type=Path, default=None)
    args = p.parse_args(argv)
    frames = recorded_frames(args.sessions, args.suite, print, args.truth_cache)
    plan = [i for i, is_plan in enumerate(frames["is_plan"]) if is_plan]
    if not plan:
        raise SystemExit(f"{' '.join(map(str, args.sessions))}: no plan frame to write")
    args.out.mkdir(parents=True, exist_ok=True)
    write_manifest(args.out, args.image_size, len(frames["state"][plan[0]]))
    name = args.out / shard_name(0)
    episodes: dict[str, int] = {}
    with open(f"{name}.jsonl", "w", encoding="utf-8") as f:
        for i in plan:
            f.write(json.dumps({"episode": episodes.setdefault(frames["episode"][i], len(episodes)),
                                "family": frames["family"][i], "context": {"task": frames["tasks"][i]},
                                "facts": frames["truth"][i]}) + "\n")
    images = np.stack([stack_cameras(frames["images"][i], args.cameras, args.image_size) for i in plan])
    states = np.asarray([frames["state"][i] for i in plan], dtype=np.float32)
    save_file({"images": images, "states": states}, f"{name}.tmp.safetensors")
    os.replace(f"{name}.tmp.safetensors", f"{name}.safetensors")
    print(f"wrote {len(plan)} plan frames of {len(episodes)} episodes ({frames['drifted']} drifted) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
