"""Image augmentation shared by the models' training passes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ-style augmentation: pad by replicating the border, crop back at a random offset per image.
    images [N, C, S, S] float."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), device=images.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device)[None])  # [N, h]
    cols = (dx[:, None] + torch.arange(w, device=images.device)[None])  # [N, w]
    c = padded.shape[1]
    padded = padded.gather(2, rows[:, None, :, None].expand(n, c, h, padded.shape[3]))
    return padded.gather(3, cols[:, None, None, :].expand(n, c, h, w))
