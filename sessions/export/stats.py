"""Feature statistics in LeRobot's layout: min, max, mean, std, count and q01/q10/q50/q90/q99.

Vectors [T, D] get per-dimension stats of shape (D,); scalars [T] get shape (1,); images
[T, H, W, 3] get per-channel stats of shape (3, 1, 1) scaled to [0, 1]. `count` is always (1,)
(the number of frames). Quantiles are exact (np.quantile) rather than histogram estimates.
"""

from __future__ import annotations

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
# Image stats are computed on a subsample: every pixel of every frame costs far more than it tells.
MAX_IMAGE_FRAMES = 100
MAX_IMAGE_SIDE = 64


def vector_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Stats of [T] or [T, D] numbers."""
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(len(values), -1)
    if len(flat) == 0:
        raise ValueError("cannot compute stats of an empty feature")
    stats = {
        "min": flat.min(axis=0),
        "max": flat.max(axis=0),
        "mean": flat.mean(axis=0),
        "std": flat.std(axis=0),
        "count": np.array([len(flat)]),
    }
    qs = np.quantile(flat, list(QUANTILES.values()), axis=0)
    for k, name in enumerate(QUANTILES):
        stats[name] = qs[k]
    return stats


def image_sample(frames: np.ndarray) -> np.ndarray:
    """A strided subsample of uint8 [T, H, W, 3] frames used for image stats."""
    step_t = max(1, -(-len(frames) // MAX_IMAGE_FRAMES))
    step_xy = max(1, -(-max(frames.shape[1:3]) // MAX_IMAGE_SIDE))
    return frames[::step_t, ::step_xy, ::step_xy]


def image_stats_from_sample(sample: np.ndarray, frame_count: int) -> dict[str, np.ndarray]:
    """Per-channel stats from an already-gathered pixel sample [N, 3] (uint8)."""
    stats = vector_stats(sample.reshape(-1, 3).astype(np.float64) / 255.0)
    out = {k: v.reshape(3, 1, 1) for k, v in stats.items() if k != "count"}
    out["count"] = np.array([frame_count])
    return out


def to_lists(stats: dict[str, np.ndarray]) -> dict[str, list]:
    return {k: np.asarray(v).tolist() for k, v in stats.items()}
