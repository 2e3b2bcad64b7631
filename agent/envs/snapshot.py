"""Save a front and a wrist camera picture from the middle of an oracle + expert episode.

    python -m agent.envs.snapshot --family stack_three --out docs/images [--size 256] [--seed 0]

PNG files are written with zlib alone (no imaging library needed).
"""

from __future__ import annotations

import argparse
import struct
import sys
import zlib
from pathlib import Path

import numpy as np


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB uint8 [H, W, 3] array as a PNG."""
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"write_png needs uint8 [H, W, 3], got {image.dtype} {image.shape}")
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def snapshot(family: str, out: Path, size: int = 256, seed: int = 0, at_fraction: float = 0.5) -> list[Path]:
    from agent.envs.expert import ScriptedExpert
    from agent.envs.oracle import OraclePlanner
    from agent.envs.tabletop import make_env
    from policies.types import PlanContext

    env = make_env(family=family, image_size=size)
    obs, info = env.reset(seed=seed)
    planner, expert = OraclePlanner(seed=seed), ScriptedExpert()
    n_subtasks = len(info["subtasks"])
    context = PlanContext(task=obs["task"])
    for _ in range(info["max_steps"]):
        if info["subtasks_completed"] >= at_fraction * n_subtasks and info["privileged"].held is not None:
            break
        o = env.observation(obs, info)
        plan = planner.plan(o, context)
        for action in expert.act(o, plan.subtask)[:5]:
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        if terminated or truncated:
            break
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for camera in ("front", "wrist"):
        path = out / f"{family}_{camera}.png"
        write_png(path, obs["images"][camera])
        paths.append(path)
    env.close()
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in snapshot(args.family, args.out, args.size, args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
