"""Camera images as the models read them, and the image augmentation shared by their training passes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def camera_input(images: torch.Tensor, dtype: torch.dtype, shift_pad: int, training: bool) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> `dtype` [N, 3, H, W] scaled to [-1, 1]; while training, randomly shifted by up to
    `shift_pad` pixels (0: not at all). The pi05 image read-outs (ViT, resampler, objects) all read images so."""
    x = images.permute(0, 3, 1, 2).to(dtype) / 127.5 - 1.0
    if training and shift_pad > 0:
        x = random_shift(x, shift_pad)
    return x


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
