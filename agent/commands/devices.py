"""`--device` and `--dtype`, the same on every verb that builds a learned model.

    add_device_arguments(parser)                   # --device cpu, --dtype fp32 (coach, run, serve)
    add_device_arguments(parser, dtype="bf16")     # a verb whose default differs (finetune)
    problem = device_problem(args.device)          # None, or one line naming the fix

Every learned spec (pi05:, vla:, hf:) takes both; the privileged references ignore them. bf16 is
autocast for the project's own models and bf16 weights for hf: models.
"""

from __future__ import annotations

import argparse

DTYPES = ("fp32", "bf16")
DEVICE_HELP = "torch device of the learned models: cpu | cuda | cuda:N | mps (default cpu)"


def add_device_arguments(parser: argparse.ArgumentParser, dtype: str | None = "fp32", dtype_help: str | None = None) -> None:
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    parser.add_argument("--dtype", default=dtype, choices=DTYPES,
                        help=dtype_help or f"precision of the learned models (default {dtype})")


def device_problem(device: str) -> str | None:
    """Why `device` cannot run a model here, or None. torch is imported only for a device other than cpu
    (runs of the privileged references never need it)."""
    if device == "cpu":
        return None
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        return f"--device {device!r} is not a torch device; use cpu, cuda, cuda:N or mps"
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {device}: torch sees no CUDA device here; use --device cpu"
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            return f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s); use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {device}: torch sees no MPS device here; use --device cpu"
    elif parsed.type not in ("cuda", "mps"):
        return f"--device {device!r}: hivla runs models on cpu, cuda or mps"
    return None
