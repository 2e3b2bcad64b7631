"""The low-level VLA: both cameras, the robot state and the subtask text in; an action chunk out.

    text   subtask tokens [B, L] -> embeddings -> transformer encoder -> masked mean      -> t [B, W]
    vision per camera: image [B, 3, S, S] -> conv 3x3 / GroupNorm / (FiLM from t) / ReLU, x len(channels)
           -> 1x1 conv to K heat maps -> spatial softmax -> K expected (x, y)           -> k [B, 2K]
    head   [k_front, k_wrist, state, t] -> MLP -> chunk [B, H, A]  ("regression": L1 or L2 on the chunk)
           or, with "flow", an MLP velocity field over the noisy chunk and the flow time, integrated
           from noise in `flow_steps` Euler steps (pi0's flow matching, t ~ Beta(1.5, 1))

The subtask conditions perception itself (FiLM on the last conv layers), not only the head: which
block is the target decides where the keypoints should land. All tensors are normalised: images
in [-0.5, 0.5], state and actions in [-1, 1] (see processor.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from policies.augment import random_shift
from policies.vla.configuration import VlaConfig


class TextEncoder(nn.Module):
    def __init__(self, cfg: VlaConfig):
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.text_width, padding_idx=cfg.pad_id)
        self.positions = nn.Parameter(torch.zeros(cfg.max_subtask_tokens, cfg.text_width))
        layer = nn.TransformerEncoderLayer(cfg.text_width, cfg.text_heads, 2 * cfg.text_width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, L] -> [B, W]"""
        mask = mask.clone()
        mask[:, 0] |= ~mask.any(dim=1)  # an empty text attends to its first (pad) token, not to nothing
        x = self.tokens(ids) + self.positions[: ids.shape[1]]
        x = self.encoder(x, src_key_padding_mask=~mask)
        m = mask.unsqueeze(-1).to(x.dtype)
        return self.norm((x * m).sum(1) / m.sum(1))


class SpatialSoftmax(nn.Module):
    """Feature map [B, C, h, w] -> K expected keypoint positions (x, y) in [-1, 1]: [B, 2K]."""

    def __init__(self, channels: int, keypoints: int):
        super().__init__()
        self.to_maps = nn.Conv2d(channels, keypoints, 1)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.to_maps(x)
        b, k, h, w = maps.shape
        attn = torch.softmax(maps.flatten(2).float() / self.log_temperature.exp(), dim=-1).view(b, k, h, w)
        ys = torch.linspace(-1.0, 1.0, h, device=x.device)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device)
        kx = (attn.sum(2) * xs).sum(-1)
        ky = (attn.sum(3) * ys).sum(-1)
        return torch.stack([kx, ky], dim=-1).flatten(1)


class CameraEncoder(nn.Module):
    def __init__(self, cfg: VlaConfig):
        super().__init__()
        self.convs, self.norms, self.films = nn.ModuleList(), nn.ModuleList(), nn.ModuleDict()
        c_in = 3
        n = len(cfg.conv_channels)
        for i, (c, s) in enumerate(zip(cfg.conv_channels, cfg.conv_strides)):
            self.convs.append(nn.Conv2d(c_in, c, 3, stride=s, padding=1))
            self.norms.append(nn.GroupNorm(cfg.group_norm_groups, c))
            if i >= n - cfg.film_layers:
                film = nn.Linear(cfg.text_width, 2 * c)
                nn.init.zeros_(film.weight)  # starts as the identity: (1 + 0) * x + 0
                nn.init.zeros_(film.bias)
                self.films[str(i)] = film
            c_in = c
        self.keypoints = SpatialSoftmax(c_in, cfg.keypoints)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """image [B, 3, S, S], text [B, W] -> keypoints [B, 2K]"""
        x = image
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = norm(conv(x))
            if str(i) in self.films:
                gamma, beta = self.films[str(i)](text).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
                x = x * (1 + gamma) + beta
            x = F.relu(x)
        return self.keypoints(x)


def mlp(d_in: int, hidden: int, layers: int, d_out: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.GELU()]
    mods.append(nn.Linear(hidden if layers else d_in, d_out))
    return nn.Sequential(*mods)


def beta_time(n: int, device) -> torch.Tensor:
    """pi0's flow time: t ~ Beta(1.5, 1), kept away from 0 (openpi scales it into [0.001, 1])."""
    t = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0)).sample((n,)).to(device)
    return t * 0.999 + 0.001


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1]: [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, 6.0, half, device=t.device))  # periods from 1 to e^-6
    angles = t[:, None] * freqs[None] * 2 * torch.pi
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class VlaModel(nn.Module):
    def __init__(self, cfg: VlaConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.text = TextEncoder(cfg)
        self.cameras = nn.ModuleDict({cam: CameraEncoder(cfg) for cam in cfg.cameras})
        features = 2 * cfg.keypoints * len(cfg.cameras) + cfg.state_dim + cfg.text_width
        out = cfg.chunk_size * cfg.action_dim
        if cfg.head == "regression":
            self.head = mlp(features, cfg.hidden_dim, cfg.head_layers, out)
        else:
            self.head = mlp(features + out + cfg.time_dim, cfg.hidden_dim, cfg.head_layers + 1, out)

    # -- features --------------------------------------------------------------------------------
    def features(self, images: torch.Tensor, state: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """images uint8 [B, n_cam, S, S, 3], state [B, D], ids/mask [B, L] -> [B, F]"""
        cfg = self.cfg
        text = self.text(ids, mask)
        b, n_cam = images.shape[:2]
        x = images.permute(0, 1, 4, 2, 3).float().div(255.0).sub(0.5).flatten(0, 1)  # [B*n_cam, 3, S, S]
        if self.training and cfg.random_shift_pad > 0:
            x = random_shift(x, cfg.random_shift_pad)
        x = x.view(b, n_cam, *x.shape[1:])
        keypoints = [enc(x[:, i], text) for i, enc in enumerate(self.cameras.values())]
        return torch.cat(keypoints + [state.to(text.dtype), text], dim=-1)

    def _velocity(self, feats: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([feats, x_t.flatten(1).to(feats.dtype), time_embedding(t, self.cfg.time_dim).to(feats.dtype)], -1)
        return self.head(inp).view_as(x_t)

    # -- training --------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: images, state, subtask_ids, subtask_mask, actions [B, H, A], action_mask [B, H]."""
        feats = self.features(batch["images"], batch["state"], batch["subtask_ids"], batch["subtask_mask"])
        actions = batch["actions"]
        mask = batch["action_mask"].unsqueeze(-1).to(actions.dtype)
        denom = (mask.sum() * actions.shape[-1]).clamp(min=1.0)
        if self.cfg.head == "regression":
            err = self.head(feats).view_as(actions).float() - actions
            err = err.abs() if self.cfg.regression_loss == "l1" else err ** 2
            loss = (err * mask).sum() / denom
        else:
            noise = torch.randn_like(actions)
            t = beta_time(len(actions), actions.device)
            x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
            pred = self._velocity(feats, x_t, t).float()
            loss = ((pred - (noise - actions)) ** 2 * mask).sum() / denom
        return loss, {"loss": float(loss.detach())}

    # -- inference -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_action_chunk(self, images: torch.Tensor, state: torch.Tensor, ids: torch.Tensor,
                             mask: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """-> normalised chunk [B, H, A]. `noise` (flow head only) fixes the starting sample."""
        cfg = self.cfg
        feats = self.features(images, state, ids, mask)
        shape = (len(feats), cfg.chunk_size, cfg.action_dim)
        if cfg.head == "regression":
            return self.head(feats).view(shape).float()
        x = noise if noise is not None else torch.randn(shape, device=feats.device)
        dt = -1.0 / cfg.flow_steps
        for i in range(cfg.flow_steps):  # integrate from noise (t = 1) to actions (t = 0)
            t = torch.full((shape[0],), 1.0 + i * dt, device=feats.device)
            x = x + dt * self._velocity(feats, x, t).float()
        return x


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
