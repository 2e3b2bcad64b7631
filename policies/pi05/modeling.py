"""The π0.5-style model in one file, read top to bottom.

(Over 450 lines on purpose, as nanoGPT's model.py: the prefix, the backbone, the action expert, the
losses and the fast inference paths share one layout of segments and caches, and read best together.)

    images (front, wrist) ─► ViT (shared) ─┐
    task, coaching context, state bins ────┴─► prefix ─► Gemma-style backbone ─► thought + subtask (text)
                                                   │
    subtask text ──────────────────────────────────┤ per-layer keys/values (detached: knowledge insulation)
                                                   ▼
    noisy action chunk + flow time ─► action expert (adaptive RMSNorm) ─► velocity ─► 10 Euler steps

One backbone sequence is laid out in four segments:

    [ base prefix | coaching context | subtask prompt | target text ]   + expert tokens [ actions ]
      images,       "done: {subtask}   "pick up the    "<bos> thought
      task, state    | corrections"     red block"      So: subtask <eos>"

  base prefix  bidirectional among itself; sees nothing else
  context      sees the base prefix and itself (only the high level has a coaching context)
  subtask      sees the base prefix and itself: the low level's instruction (teacher-forced in training)
  target       sees base prefix + context, causal among itself: what the high level decodes
  actions      (expert) see base prefix + subtask + all actions. The backbone keys/values are
               detached, so the flow loss never updates the backbone (knowledge insulation).
  action tokens (training only) the chunk discretised into bins, causal, seeing base + subtask: as in
               π0.5's KI recipe, the backbone learns action-relevant features from these tokens
               while the expert learns the continuous chunk by flow matching.

Because the base prefix never sees the context, and the subtask never sees the context, the low
level at inference ([base | subtask], no context: LowLevelPolicy.act only gets a subtask) sees
exactly the keys/values it was trained on. Segments that never see each other may share RoPE
positions: context and subtask both start right after the base prefix.

At inference the high level runs [base | context] once and decodes the target with a KV cache; the
low level runs [base | subtask] once per chunk and then only the expert for each Euler step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policies.augment import camera_input
from policies.pi05.configuration import Pi05Config
from policies.pi05.objects import ObjectReadout
from policies.pi05.vision import ConvResampler, group_norm_convs

if TYPE_CHECKING:
    from policies.pi05.constrained import PlanConstraint

KVCache = list[tuple[Tensor, Tensor]]  # per layer: keys, values [B, kv_heads, L, head_dim] (RoPE applied)


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Gemma's RMSNorm: scales by (1 + weight), weight initialised at zero."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * (1.0 + self.weight.float())).to(dtype)


class AdaRMSNorm(nn.Module):
    """π0.5's adaptive RMSNorm: the flow time sets scale, shift and a residual gate (zero-initialised,
    so each expert block starts as the identity)."""

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.modulation = nn.Linear(cond_dim, 3 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        # x [B, L, D], cond [B, C] -> normed [B, L, D], gate [B, 1, D]
        dtype = x.dtype
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        scale, shift, gate = self.modulation(cond).unsqueeze(1).chunk(3, dim=-1)
        normed = normed * (1.0 + scale.float()) + shift.float()
        return normed.to(dtype), gate.to(dtype)


def rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Rotary position embedding. x [B, heads, L, d], positions [B, L] (int)."""
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)  # [d/2]
    angles = positions.float()[:, None, :, None] * freqs  # [B, 1, L, d/2]
    sin, cos = angles.sin(), angles.cos()
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.to(x.dtype)


class GeGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.gate(x), approximate="tanh") * self.up(x))


class GemmaBlock(nn.Module):
    """One Gemma layer's weights for one stream (backbone or expert). Attention itself is done by the
    model, because the expert's queries attend to the backbone's keys/values (joint attention)."""

    def __init__(self, width: int, mlp_dim: int, cfg: Pi05Config, adaptive: bool):
        super().__init__()
        self.adaptive = adaptive
        if adaptive:
            self.attn_norm = AdaRMSNorm(width, cfg.expert_width)
            self.mlp_norm = AdaRMSNorm(width, cfg.expert_width)
        else:
            self.attn_norm = RMSNorm(width)
            self.mlp_norm = RMSNorm(width)
        self.q = nn.Linear(width, cfg.num_heads * cfg.head_dim, bias=False)
        self.k = nn.Linear(width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v = nn.Linear(width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o = nn.Linear(cfg.num_heads * cfg.head_dim, width, bias=False)
        self.mlp = GeGLU(width, mlp_dim)

    def norm(self, which: str, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor | None]:
        layer = self.attn_norm if which == "attn" else self.mlp_norm
        if self.adaptive:
            return layer(x, cond)
        return layer(x), None


@functools.lru_cache(maxsize=16)
def _signed_frequencies(head_dim: int, theta: float, device: torch.device) -> Tensor:
    """RoPE's frequencies [d] as `rope` computes them, the first half negated: [-f, f] (_rope_tables)."""
    with torch.inference_mode(False):
        freqs = theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
        return torch.cat([-freqs, freqs])


@functools.lru_cache(maxsize=64)
def _segment_rules(layout: tuple[tuple[int, int], ...], device: torch.device) -> Tensor:
    """Pi05Model.segment_mask's [L, L] rules for segments (id, length) in sequence order: who may attend
    to whom (Pi05Model.ALLOWED), causal within TARGET and ACTION_TOKENS. The same for every call with
    this layout, so built once (its ~15 small ops were ~0.15 ms of a plan on this CPU)."""
    model = Pi05Model
    with torch.inference_mode(False):  # a plain tensor: training's masks use it too
        seg = torch.tensor([s for s, n in layout for _ in range(n)], dtype=torch.long, device=device)
        rules = torch.tensor([[(q, k) in model.ALLOWED for k in range(5)] for q in range(5)], device=device)
        allowed = rules[seg[:, None], seg[None, :]]
        idx = torch.arange(seg.shape[0], device=device)
        causal_seg = (seg == model.TARGET) | (seg == model.ACTION_TOKENS)
        same = (seg[:, None] == seg[None, :]) & causal_seg[:, None]
        return allowed & (~same | (idx[None, :] <= idx[:, None]))


def _residual(x: Tensor, y: Tensor, gate: Tensor | None) -> Tensor:
    return x + y if gate is None else x + y * gate


class ConvStem(nn.Module):
    """A GroupNorm conv stem in place of the linear patch embedding (a "hybrid" ViT): log2(patch_size)
    3x3 stride-2 convs, then one 3x3 conv, giving one token per patch_size^2 pixels. A linear patch
    embedding trained from scratch on little data does not separate a 4-pixel block's colour from its
    surroundings; a few conv layers do (the low-level VLA's lesson, and robomimic's / diffusion_policy's)."""

    def __init__(self, out_channels: int, patch_size: int):
        super().__init__()
        downsamples = patch_size.bit_length() - 1
        widths = [min(out_channels, 32 * 2**i) for i in range(downsamples)] + [out_channels]
        self.net = group_norm_convs(widths, [2] * downsamples + [1])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class VisionTower(nn.Module):
    """SigLIP-style ViT: patch embedding (or a conv stem, `vision_stem="conv"`), learned positions,
    pre-LN blocks, final LN, then a linear projection into the backbone width. Shared by all cameras."""

    def __init__(self, cfg: Pi05Config):
        super().__init__()
        w = cfg.vision_width
        if cfg.vision_stem == "conv":
            self.patch: nn.Module = ConvStem(w, cfg.patch_size)
        else:
            self.patch = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.pos = nn.Parameter(torch.randn(1, cfg.image_tokens_per_camera, w) * 0.02)
        layer = nn.TransformerEncoderLayer(
            w, cfg.vision_heads, cfg.vision_mlp_dim, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.vision_depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(w)
        self.proj = nn.Linear(w, cfg.width)
        self.shift_pad = cfg.random_shift_pad

    def forward(self, images: Tensor) -> Tensor:
        # images uint8 [B, H, W, 3] -> tokens [B, N, width]
        if not (self.training or torch.is_grad_enabled()):
            return self._forward_fused(images)
        x = camera_input(images, self.pos.dtype, self.shift_pad, self.training)
        if isinstance(self.patch, nn.Conv2d):  # the linear patch embedding
            x = self._embed_patches(x)
        else:
            x = self.patch(x).flatten(2).transpose(1, 2)
        x = x + self.pos
        for layer in self.blocks.layers:
            x = _vit_layer(layer, x)
        return self.proj(self.norm(x))

    def _embed_patches(self, x: Tensor) -> Tensor:
        """The patch conv (kernel = stride = patch) as what it is, one matmul over the cut-out patches:
        [N, 3, H, W] -> [N, patches, width], the conv's output in the same order. The same sums as the
        conv; on this CPU the conv took ~0.3 ms a plan (oneDNN reorders its weights each call), this ~0.03."""
        n, c, h, w = x.shape
        p = self.patch.kernel_size[0]
        patches = x.view(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // p) * (w // p), c * p * p)
        return F.linear(patches, self.patch.weight.flatten(1), self.patch.bias)

    def _forward_fused(self, images: Tensor) -> Tensor:
        """forward for inference (eval, no autograd) on fused copies of the weights (_FusedVit): the same
        arithmetic in ~30% less time on this CPU (a plan's two 64-px cameras, between the backbone's
        matmuls: ~1.0 vs ~1.45 ms on a loaded core), mostly from matmuls on [in, out] matrices (nn.Linear's
        [out, in] ran the MLP's at half the speed) and no LayerNorm affine."""
        fused = self._fused_weights()
        n = images.shape[0]
        if fused.patch is None:  # the conv stem
            x = self.patch(camera_input(images, self.pos.dtype, 0, False)).flatten(2).transpose(1, 2)
            x = (x + fused.pos).reshape(-1, x.shape[-1])
        else:  # the patches cut from the uint8 pixels, scaled to [-1, 1] as camera_input does, one matmul
            _, h, w, c = images.shape
            p = self.patch.kernel_size[0]
            patches = images.reshape(n, h // p, p, w // p, p, c).permute(0, 1, 3, 5, 2, 4).reshape(-1, c * p * p)
            x = torch.mm(patches.to(fused.patch.dtype).div_(127.5).sub_(1.0), fused.patch)
            x = x.view(n, -1, x.shape[-1]).add_(fused.pos).view(-1, x.shape[-1])
        for layer in fused.layers:
            x = _vit_layer_fused(layer, x, n)
        x = F.layer_norm(x, x.shape[-1:], eps=fused.norm_eps)
        return torch.addmm(fused.proj_bias, x, fused.proj).view(n, -1, fused.proj.shape[1])

    def _fused_weights(self) -> "_FusedVit":
        """The fused copies, rebuilt only when a parameter changes (in place: its version; or replaced:
        its storage) or the dtype or device does, as Pi05Model._inference_weights."""
        key = _parameter_state(self)
        cached = self.__dict__.get("_fused")
        if cached is None or cached.key != key:
            with torch.no_grad():
                cached = _FusedVit(self, key)
            self.__dict__["_fused"] = cached  # a plain attribute: not a parameter, not in the state dict
        return cached


def _parameter_state(module: nn.Module) -> tuple:
    """(version, storage address) of every parameter of `module`: what the fused inference copies are
    keyed on (an optimizer step or load_state_dict bumps a version; .to() or a replaced parameter moves
    the storage). The modules walked directly: Module.parameters() took ~5x as long (~130 us for the
    `small` model) on this CPU."""
    state: list[tuple[int, int]] = []

    def walk(m: nn.Module) -> None:
        state.extend((p._version, p.data_ptr()) for p in m._parameters.values() if p is not None)
        for child in m._modules.values():
            if child is not None:
                walk(child)

    walk(module)
    return tuple(state)


class _FusedVitLayer:
    """One encoder layer's weights as _vit_layer_fused reads them: transposed for x @ w, each LayerNorm's
    scale and shift folded into the matmul it feeds ((x_hat * g + b) @ W + c == x_hat @ (g[:, None] * W)
    + (b @ W + c)), so the norms run without affine."""

    def __init__(self, layer: nn.TransformerEncoderLayer):
        attn = layer.self_attn
        self.heads = attn.num_heads
        self.eps1, self.eps2 = layer.norm1.eps, layer.norm2.eps
        self.qkv, self.qkv_bias = _fold_norm(layer.norm1, attn.in_proj_weight, attn.in_proj_bias)
        self.o, self.o_bias = attn.out_proj.weight.T.contiguous(), attn.out_proj.bias
        self.fc1, self.fc1_bias = _fold_norm(layer.norm2, layer.linear1.weight, layer.linear1.bias)
        self.fc2, self.fc2_bias = layer.linear2.weight.T.contiguous(), layer.linear2.bias


class _FusedVit:
    """The ViT's weights for VisionTower._forward_fused: its layers (_FusedVitLayer); the patch conv as
    a [3 * p * p, width] matrix with its bias added to the positions (None for the conv stem, which
    runs as its modules); the final LayerNorm's affine folded into the projection."""

    def __init__(self, tower: VisionTower, key: tuple):
        self.key = key
        self.layers = [_FusedVitLayer(layer) for layer in tower.blocks.layers]
        self.pos = tower.pos[0]  # [N, width]
        self.patch = None
        if isinstance(tower.patch, nn.Conv2d):  # the linear patch embedding: a matrix, its bias in the positions
            self.patch = tower.patch.weight.flatten(1).T.contiguous()  # [3 * p * p, width]
            self.pos = tower.pos[0] + tower.patch.bias
        self.norm_eps = tower.norm.eps
        self.proj, self.proj_bias = _fold_norm(tower.norm, tower.proj.weight, tower.proj.bias)


def _fold_norm(norm: nn.LayerNorm, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """A LayerNorm's affine folded into the nn.Linear (weight [out, in], bias) it feeds: the [in, out]
    matrix and bias that take the norm's output before its affine."""
    w = weight.T.float()
    return ((norm.weight.float()[:, None] * w).to(weight.dtype).contiguous(),
            (norm.bias.float() @ w + bias.float()).to(bias.dtype))


def _vit_layer_fused(layer: _FusedVitLayer, x: Tensor, n: int) -> Tensor:
    """_vit_layer on _FusedVitLayer's weights: x [N*T, W] -> [N*T, W] (N images of T tokens)."""
    w = x.shape[-1]
    t = x.shape[0] // n
    h = F.layer_norm(x, (w,), eps=layer.eps1)
    qkv = torch.addmm(layer.qkv_bias, h, layer.qkv).view(n, t, 3, layer.heads, w // layer.heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n * t, w)
    x = torch.addmm(x, a, layer.o).add_(layer.o_bias)
    h = F.gelu(torch.addmm(layer.fc1_bias, F.layer_norm(x, (w,), eps=layer.eps2), layer.fc1))
    return torch.addmm(x, h, layer.fc2).add_(layer.fc2_bias)


def _vit_layer(layer: nn.TransformerEncoderLayer, x: Tensor) -> Tensor:
    """What nn.TransformerEncoderLayer (pre-LN, exact GELU, no dropout) computes for x [N, T, W], in
    a dozen plain ops: its inference fast path took ~0.4 ms a layer on 32 tokens on this CPU, this
    about a third. Its weights, so checkpoints load unchanged."""
    n, t, w = x.shape
    attn = layer.self_attn
    heads = attn.num_heads
    h = F.layer_norm(x, (w,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).view(n, t, 3, heads, w // heads).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, w)
    x = x + F.linear(a, attn.out_proj.weight, attn.out_proj.bias)
    h = F.layer_norm(x, (w,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)
    return x + layer.linear2(F.gelu(layer.linear1(h)))


# the image read-outs other than the ViT (which serves "patch" and "conv")
VISION_STEMS = {"resampler": ConvResampler, "objects": ObjectReadout}


def time_embedding(t: Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> Tensor:
    """Sine-cosine embedding of the flow time t [B] in [0, 1] -> [B, dim] (periods as in π0)."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angles = t.float()[:, None] * (2 * math.pi / period)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------


class Pi05Model(nn.Module):
    def __init__(self, cfg: Pi05Config):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.vision = VISION_STEMS.get(cfg.vision_stem, VisionTower)(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.backbone = nn.ModuleList(
            GemmaBlock(cfg.width, cfg.mlp_dim, cfg, adaptive=False) for _ in range(cfg.depth)
        )
        self.final_norm = RMSNorm(cfg.width)
        # action expert
        self.action_in = nn.Linear(cfg.action_dim, cfg.expert_width)
        self.time_mlp = nn.Sequential(
            nn.Linear(cfg.expert_width, cfg.expert_width), nn.SiLU(),
            nn.Linear(cfg.expert_width, cfg.expert_width), nn.SiLU(),
        )
        self.expert = nn.ModuleList(
            GemmaBlock(cfg.expert_width, cfg.expert_mlp_dim, cfg, adaptive=True) for _ in range(cfg.depth)
        )
        self.expert_norm = AdaRMSNorm(cfg.expert_width, cfg.expert_width)
        self.action_out = nn.Linear(cfg.expert_width, cfg.action_dim)
        self.apply(self._init_weights)
        for module in self.modules():  # the adaptive norms start as identity blocks (adaLN-zero)
            if isinstance(module, AdaRMSNorm):
                nn.init.zeros_(module.modulation.weight)
                nn.init.zeros_(module.modulation.bias)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    # -- prefix --------------------------------------------------------------------------------

    def embed_text(self, ids: Tensor) -> Tensor:
        # Gemma scales token embeddings by sqrt(width); image tokens are not scaled (as in PaliGemma).
        return self.embed(ids) * math.sqrt(self.cfg.width)

    def embed_images(self, images: Tensor) -> Tensor:
        """uint8 [B, n_cam, H, W, 3] -> image tokens [B, cfg.image_tokens, W]. The object read-out reads
        the cameras together; the other stems each camera alone (shared weights)."""
        b, n_cam = images.shape[:2]
        if self.cfg.vision_stem == "objects":
            return self.vision(images)
        return self.vision(images.flatten(0, 1)).reshape(b, n_cam * self.cfg.image_tokens_per_camera, -1)

    def embed_prefix(self, images: Tensor, prefix_ids: Tensor, prefix_mask: Tensor,
                     object_features: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """images uint8 [B, n_cam, H, W, 3], prefix_ids/mask [B, Lt] -> tokens [B, P, W], valid [B, P].
        `object_features` [B, n_objects, vision_width]: the frozen object read-out's features, cached
        per frame, in place of running it on `images` (the grounded recipe's second stage)."""
        if self.cfg.blind:  # the text-only baseline: image tokens that carry nothing
            img = torch.zeros(len(prefix_ids), self.cfg.image_tokens, self.cfg.width, device=prefix_ids.device)
        elif object_features is not None:
            img = self.vision.tokens(object_features)
        else:
            img = self.embed_images(images)
        text = self.embed_text(prefix_ids).to(img.dtype)
        tokens = torch.cat([img, text], dim=1)
        valid = torch.cat([torch.ones(img.shape[:2], dtype=torch.bool, device=img.device), prefix_mask.bool()], 1)
        return tokens, valid

    # -- attention -----------------------------------------------------------------------------

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        # q [B, h, Lq, d], k/v [B, kvh, Lk, d], mask bool [B, Lq, Lk] (True = may attend)
        groups = self.cfg.num_heads // self.cfg.num_kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        return out.transpose(1, 2).flatten(2)  # [B, Lq, h*d]

    def _project_qkv(self, block: GemmaBlock, h: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, _ = h.shape
        cfg = self.cfg
        q = block.q(h).view(b, n, cfg.num_heads, cfg.head_dim).transpose(1, 2)
        k = block.k(h).view(b, n, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        v = block.v(h).view(b, n, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        q = rope(q, positions, cfg.rope_theta)
        k = rope(k, positions, cfg.rope_theta)
        return q, k, v

    def run_backbone(
        self, x: Tensor, positions: Tensor, mask: Tensor, past: KVCache | None = None, kv_only: bool = False
    ) -> tuple[Tensor | None, KVCache]:
        """x [B, L, W] at positions [B, L]; mask [B, L, L_past + L]. Returns the final-normed hidden
        states and, per layer, the keys/values of past + these tokens (the new cache). `kv_only`: the
        caller needs only the cache (a prefix), so the last layer stops at its keys/values (no
        attention output, MLP or final norm: about a fifth of a 4-layer prefix pass) and hidden is None."""
        cache: KVCache = []
        last = len(self.backbone) - 1
        for i, block in enumerate(self.backbone):
            h, _ = block.norm("attn", x, None)
            q, k, v = self._project_qkv(block, h, positions)
            if past is not None:
                k = torch.cat([past[i][0], k], dim=2)
                v = torch.cat([past[i][1], v], dim=2)
            cache.append((k, v))
            if kv_only and i == last:
                return None, cache
            x = x + block.o(self._attend(q, k, v, mask))
            h, _ = block.norm("mlp", x, None)
            x = x + block.mlp(h)
        return self.final_norm(x), cache

    def run_expert(
        self, noisy_actions: Tensor, t: Tensor, context: KVCache, context_valid: Tensor, start_pos: Tensor
    ) -> Tensor:
        """Velocity field v(x_t, t) [B, H, A]. The expert's queries attend to the backbone's per-layer
        keys/values `context` (prefix + subtask, masked by context_valid [B, Lc]) and to its own tokens.
        The context is detached (knowledge insulation) unless the config turns that off."""
        cfg = self.cfg
        b, horizon, _ = noisy_actions.shape
        x = self.action_in(noisy_actions)
        cond = self.time_mlp(time_embedding(t, cfg.expert_width).to(x.dtype))
        positions = start_pos[:, None] + torch.arange(horizon, device=x.device)[None]
        mask = torch.cat(
            [context_valid[:, None, :].expand(b, horizon, -1),
             torch.ones(b, horizon, horizon, dtype=torch.bool, device=x.device)], dim=2,
        )
        for i, block in enumerate(self.expert):
            h, gate = block.norm("attn", x, cond)
            q, k, v = self._project_qkv(block, h, positions)
            ck, cv = context[i]
            if cfg.knowledge_insulation:
                ck, cv = ck.detach(), cv.detach()
            k = torch.cat([ck.to(k.dtype), k], dim=2)
            v = torch.cat([cv.to(v.dtype), v], dim=2)
            x = _residual(x, block.o(self._attend(q, k, v, mask)), gate)
            h, gate = block.norm("mlp", x, cond)
            x = _residual(x, block.mlp(h), gate)
        h, _ = self.expert_norm(x, cond)
        return self.action_out(h)

    def logits(self, hidden: Tensor) -> Tensor:
        return hidden @ self.embed.weight.to(hidden.dtype).T  # tied embeddings, as Gemma

    # -- segments and masks --------------------------------------------------------------------

    BASE, CONTEXT, SUBTASK, TARGET, ACTION_TOKENS = 0, 1, 2, 3, 4
    # (query segment, key segment) pairs allowed to attend; TARGET and ACTION_TOKENS are causal within
    ALLOWED = {(0, 0), (1, 0), (1, 1), (2, 0), (2, 2), (3, 0), (3, 1), (3, 3), (4, 0), (4, 2), (4, 4)}

    @classmethod
    def segment_mask(cls, segments: list[tuple[int, Tensor]]) -> Tensor:
        """segments: [(segment id, valid [B, L_i])] in sequence order -> bool mask [B, L, L]."""
        valid = torch.cat([v.bool() for _, v in segments], 1)
        allowed = _segment_rules(tuple((s, v.shape[1]) for s, v in segments), valid.device)
        return allowed[None] & valid[:, None, :]

    @staticmethod
    def positions_from(start: Tensor, length: int) -> Tensor:
        return start[:, None] + torch.arange(length, device=start.device)[None]

    # -- training ------------------------------------------------------------------------------

    def action_token_ids(self, actions: Tensor) -> Tensor:
        """Discretised action chunk for the backbone's action-token loss: every `action_token_stride`-th
        step, each dimension of the normalised action binned into 256 bins, as the state-bin tokens.
        (π0.5 trains its backbone on FAST tokens; uniform bins are the simple stand-in.)"""
        cfg = self.cfg
        coarse = actions[:, :: cfg.action_token_stride]  # [B, H', A]
        bins = ((coarse.clamp(-1, 1) + 1) / 2 * cfg.state_bins).long().clamp(0, cfg.state_bins - 1)
        return (bins + cfg.bin_token_offset).flatten(1)  # [B, H' * A]

    def run_training_backbone(self, batch: dict[str, Tensor]) -> tuple[Tensor, KVCache, dict[str, Tensor]]:
        """One backbone pass over [base | context | subtask | target-input | action-token-input] with
        the segment mask. The action-token segment (training only) sees base + subtask, causal within."""
        cfg = self.cfg
        base, base_valid = self.embed_prefix(batch["images"], batch["prefix_ids"], batch["prefix_mask"],
                                             batch.get("object_features"))
        ctx_valid = batch["context_mask"].bool()
        sub_valid = batch["subtask_mask"].bool()
        tgt_in, tgt_valid = batch["target_ids"][:, :-1], batch["target_mask"][:, :-1].bool()
        dtype = base.dtype
        parts = [base, self.embed_text(batch["context_ids"]).to(dtype),
                 self.embed_text(batch["subtask_ids"]).to(dtype), self.embed_text(tgt_in).to(dtype)]
        n_base, n_ctx, n_sub = base_valid.sum(1), ctx_valid.sum(1), sub_valid.sum(1)
        positions = [
            base_valid.long().cumsum(1) - 1,
            self.positions_from(n_base, ctx_valid.shape[1]),
            self.positions_from(n_base, sub_valid.shape[1]),
            self.positions_from(n_base + n_ctx, tgt_in.shape[1]),
        ]
        segments = [(self.BASE, base_valid), (self.CONTEXT, ctx_valid), (self.SUBTASK, sub_valid), (self.TARGET, tgt_valid)]
        layout = {"base_valid": base_valid, "context_valid": ctx_valid, "subtask_valid": sub_valid, "target_valid": tgt_valid}
        if cfg.action_token_stride > 0:
            act_ids = self.action_token_ids(batch["actions"].float())
            act_valid = batch["action_mask"][:, :: cfg.action_token_stride].bool().repeat_interleave(cfg.action_dim, 1)
            act_in = torch.cat([torch.full_like(act_ids[:, :1], cfg.bos_id), act_ids[:, :-1]], 1)
            parts.append(self.embed_text(act_in).to(dtype))
            positions.append(self.positions_from(n_base + n_sub, act_in.shape[1]))
            segments.append((self.ACTION_TOKENS, act_valid))
            layout.update(action_token_ids=act_ids, action_token_valid=act_valid)
        mask = self.segment_mask(segments)
        hidden, cache = self.run_backbone(torch.cat(parts, 1), torch.cat(positions, 1), mask)
        layout["mask"] = mask
        return hidden, cache, layout

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Text cross-entropy on the target + flow-matching loss on the action chunk.

        batch: images uint8 [B, n_cam, H, W, 3]; prefix_ids/prefix_mask [B, Lp] (task + state bins);
        context_ids/mask [B, C]; subtask_ids/mask [B, S]; target_ids/mask [B, T] ("<bos> ... <eos>");
        actions [B, H, A] (normalised to [-1, 1]); action_mask [B, H] (False past the episode end).
        """
        cfg = self.cfg
        hidden, cache, layout = self.run_training_backbone(batch)
        base_valid, sub_valid = layout["base_valid"], layout["subtask_valid"]

        # high level: next-token prediction on thought + subtask
        p, c, s = base_valid.shape[1], layout["context_valid"].shape[1], sub_valid.shape[1]
        t_len = layout["target_valid"].shape[1]
        text_loss, logits, labels = self.text_loss(hidden, batch, layout)

        # backbone learns the actions too, as discrete tokens (its only action signal: see KI below)
        action_token_loss = torch.zeros((), device=hidden.device)
        if cfg.action_token_stride > 0:
            a_logits = self.logits(hidden[:, p + c + s + t_len:]).float()
            a_labels = layout["action_token_ids"].masked_fill(~layout["action_token_valid"], -100)
            action_token_loss = F.cross_entropy(a_logits.flatten(0, 1), a_labels.flatten(), ignore_index=-100)

        loss = cfg.text_loss_weight * text_loss + cfg.action_token_loss_weight * action_token_loss
        flow_loss = torch.zeros((), device=hidden.device)
        if cfg.flow_loss_weight > 0:  # 0: a planner-only recipe, the expert is not run
            flow_loss = self.flow_loss(batch, cache, base_valid, sub_valid, (p, c, s), hidden.dtype)
            loss = loss + cfg.flow_loss_weight * flow_loss
        with torch.no_grad():
            ok = labels != -100
            token_acc = ((logits.argmax(-1) == labels) & ok).sum().float() / ok.sum().clamp(min=1)
        return loss, {"loss": loss.item(), "text_loss": text_loss.item(), "flow_loss": flow_loss.item(),
                      "action_token_loss": action_token_loss.item(), "token_acc": token_acc.item()}

    def text_loss(self, hidden: Tensor, batch: dict[str, Tensor],
                  layout: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The high level's loss: next-token cross-entropy on the target ("thought So: subtask"), read from
        run_training_backbone's hidden states; with its logits [B, T, V] and labels [B, T] (-100: padding)."""
        p, c, s = (layout[k].shape[1] for k in ("base_valid", "context_valid", "subtask_valid"))
        logits = self.logits(hidden[:, p + c + s: p + c + s + layout["target_valid"].shape[1]]).float()
        labels = batch["target_ids"][:, 1:].masked_fill(~batch["target_mask"][:, 1:].bool(), -100)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100), logits, labels

    def flow_loss(self, batch: dict[str, Tensor], cache: KVCache, base_valid: Tensor, sub_valid: Tensor,
                  lengths: tuple[int, int, int], dtype: torch.dtype) -> Tensor:
        """The low level's loss: flow matching on the chunk, attending to [base | subtask] keys/values."""
        cfg = self.cfg
        p, c, s = lengths
        n_base = base_valid.sum(1)
        # low level: flow matching, x_t = t * noise + (1 - t) * actions, target velocity noise - actions
        actions = batch["actions"].float()
        b = actions.shape[0]
        beta = torch.distributions.Beta(cfg.time_beta_alpha, cfg.time_beta_beta)
        t = (beta.sample((b,)) * 0.999 + 0.001).to(actions.device)
        noise = torch.randn_like(actions)
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
        keep = torch.cat([torch.arange(p), torch.arange(p + c, p + c + s)]).to(actions.device)
        context = [(k.index_select(2, keep), v.index_select(2, keep)) for k, v in cache]
        v_pred = self.run_expert(x_t.to(dtype), t, context, torch.cat([base_valid, sub_valid], 1),
                                 n_base + sub_valid.sum(1)).float()
        err = (v_pred - (noise - actions)).pow(2).mean(-1)  # [B, H]
        amask = batch["action_mask"].float()
        return (err * amask).sum() / amask.sum().clamp(min=1.0)

    # -- inference: high level -----------------------------------------------------------------

    def encode_plan_prefix(
        self, images: Tensor, prefix_ids: Tensor, prefix_mask: Tensor, context_ids: Tensor, context_mask: Tensor,
        object_features: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, KVCache]:
        """Run [base | context] once. Returns (tokens, valid [B, P+C], positions, per-layer KV cache)."""
        x, valid, positions, mask = self._plan_layout(images, prefix_ids, prefix_mask, context_ids, context_mask,
                                                      object_features)
        _, cache = self.run_backbone(x, positions, mask, kv_only=True)
        return x, valid, positions, cache

    def _plan_layout(
        self, images: Tensor, prefix_ids: Tensor, prefix_mask: Tensor, context_ids: Tensor, context_mask: Tensor,
        object_features: Tensor | None = None, bos: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """[base | context] as the backbone reads it: tokens [B, P, W], valid [B, P], positions [B, P],
        mask [B, P, P]. `bos`: the target's first token (<bos>) appended, as the reference's first step
        lays it out (P counts it), so one pass gives the cache and the first token's logits."""
        base, base_valid = self.embed_prefix(images, prefix_ids, prefix_mask, object_features)
        ctx_valid = context_mask.bool()
        parts = [base, self.embed_text(context_ids).to(base.dtype)]
        n_base = base_valid.sum(1)
        positions = [base_valid.long().cumsum(1) - 1, self.positions_from(n_base, ctx_valid.shape[1])]
        segments = [(self.BASE, base_valid), (self.CONTEXT, ctx_valid)]
        if bos:
            parts.append(self.embed_text(torch.full_like(prefix_ids[:, :1], self.cfg.bos_id)).to(base.dtype))
            positions.append((n_base + ctx_valid.sum(1))[:, None])
            segments.append((self.TARGET, torch.ones(len(ctx_valid), 1, dtype=torch.bool, device=ctx_valid.device)))
        valid = torch.cat([v for _, v in segments], 1)
        return torch.cat(parts, 1), valid, torch.cat(positions, 1), self.segment_mask(segments)

    @torch.inference_mode()  # no autograd bookkeeping at all (~7% of a plan on this CPU)
    def generate(
        self, images: Tensor, prefix_ids: Tensor, prefix_mask: Tensor, context_ids: Tensor, context_mask: Tensor,
        max_new_tokens: int | None = None, use_cache: bool | str = True, return_scores: bool = False,
        object_features: Tensor | None = None, forced_ids: Tensor | None = None,
        constraints: "Sequence[PlanConstraint | None] | None" = None, jump: bool = True,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Greedy decoding of "thought So: subtask <eos>" after [base | context]. Returns ids [B, n]
        (without <bos>; each row stops at its first <eos>, later positions are <pad>), and with
        `return_scores` the logits of each step [B, n, V] too.
        `forced_ids` [B, F] (pad past each row's end): the first tokens of each row are these, not the
        argmax (the grounded planner's scene line, written by its read-out); decoding goes on after them.
        `object_features`: the object read-out's features, when the caller has them already.
        `constraints` (one a row, None for a row decoded freely): each constrained row writes only what
        its automaton allows (policies/pi05/constrained.py: the logits masked to the allowed tokens,
        greedy among them) and always reaches <eos> (its budget grows to the automaton's longest plan);
        it takes its forced tokens from the automaton, not `forced_ids`. With `jump`, a span the
        automaton forces is appended in the same forward pass as the token before it (jump-forward:
        one multi-token step over the static cache, causal inside the span); `jump=False` feeds the
        same tokens one a step (the reference). The scores of a forced token are the logits that
        would have chosen it, as without jumping. None: decoding exactly as before.
        `use_cache=True`: the static KV cache and fused weights (the fast path); "dynamic": the cache
        grown by concatenation through `run_backbone` (the path before it); False: the whole sequence
        recomputed every step (the reference for both)."""
        cfg = self.cfg
        max_new = max_new_tokens or cfg.max_target_tokens - 1
        forced = _Forced(forced_ids, cfg.pad_id)
        if constraints is not None:
            if use_cache is not True:
                raise ValueError("constrained decoding runs on the static cache: use_cache=True")
            if len(constraints) != images.shape[0]:
                raise ValueError(f"one constraint a row (or None): got {len(constraints)} for {images.shape[0]} rows")
            ids, scores = self._decode_constrained(images, prefix_ids, prefix_mask, context_ids, context_mask, max_new,
                                                   object_features, forced, constraints, jump, return_scores)
            return (ids, scores) if return_scores else ids
        if use_cache is True:
            ids, scores = self._decode_static(images, prefix_ids, prefix_mask, context_ids, context_mask, max_new,
                                              object_features, forced)
            return (ids, scores) if return_scores else ids
        b, dev = images.shape[0], images.device
        base, base_valid = self.embed_prefix(images, prefix_ids, prefix_mask, object_features)
        ctx_valid = context_mask.bool()
        start = base_valid.sum(1) + ctx_valid.sum(1)  # first target position
        tokens = torch.full((b, 1), cfg.bos_id, dtype=torch.long, device=dev)
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        out: list[Tensor] = []
        scores: list[Tensor] = []
        if use_cache:
            _, valid, _, cache = self.encode_plan_prefix(images, prefix_ids, prefix_mask, context_ids, context_mask,
                                                         object_features)
        for step in range(max_new):
            if use_cache:
                # the newest token attends to the valid prefix and to every token decoded so far
                x = self.embed_text(tokens[:, -1:]).to(base.dtype)
                keys = torch.cat([valid, torch.ones(b, step + 1, dtype=torch.bool, device=dev)], 1)
                hidden, cache = self.run_backbone(x, (start + step)[:, None], keys[:, None, :], past=cache)
            else:
                n = tokens.shape[1]
                x = torch.cat([base, self.embed_text(context_ids).to(base.dtype),
                               self.embed_text(tokens).to(base.dtype)], 1)
                positions = torch.cat([base_valid.long().cumsum(1) - 1,
                                       self.positions_from(base_valid.sum(1), ctx_valid.shape[1]),
                                       self.positions_from(start, n)], 1)
                tgt_valid = torch.ones(b, n, dtype=torch.bool, device=dev)
                mask = self.segment_mask([(self.BASE, base_valid), (self.CONTEXT, ctx_valid), (self.TARGET, tgt_valid)])
                hidden, _ = self.run_backbone(x, positions, mask)
            logits = self.logits(hidden[:, -1]).float()
            nxt = forced.apply(step, logits.argmax(-1))
            nxt = torch.where(done, torch.full_like(logits[:, 0], cfg.pad_id, dtype=torch.long), nxt)
            out.append(nxt)
            scores.append(logits)
            done = done | (nxt == cfg.eos_id)
            tokens = torch.cat([tokens, nxt[:, None]], 1)
            if bool(done.all()):
                break
        ids = torch.stack(out, 1)
        return (ids, torch.stack(scores, 1)) if return_scores else ids

    # -- inference: low level ------------------------------------------------------------------

    def encode_action_context(
        self, images: Tensor, prefix_ids: Tensor, prefix_mask: Tensor, subtask_ids: Tensor, subtask_mask: Tensor
    ) -> tuple[KVCache, Tensor, Tensor]:
        """Backbone keys/values of [base | subtask], computed once per action chunk.
        Returns (cache, valid [B, P+S], first action position [B])."""
        (x, valid, positions, mask), start = self._action_layout(images, prefix_ids, prefix_mask, subtask_ids,
                                                                 subtask_mask)
        _, cache = self.run_backbone(x, positions, mask, kv_only=True)
        return cache, valid, start

    def _action_layout(
        self, images: Tensor, prefix_ids: Tensor, prefix_mask: Tensor, subtask_ids: Tensor, subtask_mask: Tensor
    ) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], Tensor]:
        """[base | subtask] as the backbone reads it ((tokens, valid, positions, mask) as _plan_layout),
        and the first action position [B]."""
        base, base_valid = self.embed_prefix(images, prefix_ids, prefix_mask)
        sub_valid = subtask_mask.bool()
        x = torch.cat([base, self.embed_text(subtask_ids).to(base.dtype)], 1)
        n_base = base_valid.sum(1)
        positions = torch.cat([base_valid.long().cumsum(1) - 1, self.positions_from(n_base, sub_valid.shape[1])], 1)
        mask = self.segment_mask([(self.BASE, base_valid), (self.SUBTASK, sub_valid)])
        return (x, torch.cat([base_valid, sub_valid], 1), positions, mask), n_base + sub_valid.sum(1)

    @torch.inference_mode()  # no autograd bookkeeping at all (~7% of a plan on this CPU)
    def sample_actions(
        self, images: Tensor, prefix_ids: Tensor, prefix_mask: Tensor, subtask_ids: Tensor, subtask_mask: Tensor,
        noise: Tensor | None = None, num_steps: int | None = None, cache_context: bool = True, fast: bool = True,
    ) -> Tensor:
        """Integrate the flow from noise (t=1) to actions (t=0) with Euler steps. Returns normalised
        actions [B, H, A]. `cache_context=False` recomputes the backbone every step (for benchmarks);
        `fast=False` runs the expert through `run_expert` (the reference for the static-cache path)."""
        cfg = self.cfg
        steps = num_steps or cfg.flow_steps
        b = images.shape[0]
        if noise is None:
            noise = torch.randn(b, cfg.action_horizon, cfg.action_dim, device=images.device)
        x = noise.float()
        dt = -1.0 / steps
        args = (images, prefix_ids, prefix_mask, subtask_ids, subtask_mask)
        if fast and cache_context:
            return self._sample_actions_fast(*self._action_layout(*args), x, steps)
        ctx = self.encode_action_context(*args) if cache_context else None
        for i in range(steps):
            if not cache_context:
                ctx = self.encode_action_context(*args)
            cache, valid, start = ctx
            t = torch.full((b,), 1.0 + i * dt, device=x.device)
            v = self.run_expert(x.to(cache[0][0].dtype), t, cache, valid, start).float()
            x = x + dt * v
        return x

    # -- inference fast paths --------------------------------------------------------------------
    # At the `small` dims a decoded token's arithmetic is tiny; what costs is reading ~15 MB of weights
    # (~0.6 ms from this CPU's memory) and the torch ops around them: each costs a few microseconds,
    # however small its tensors, and more between the large matmuls that evict its code and data
    # (measured in the decode loop: an RMSNorm as F.rms_norm's ~15 internal ops ~25 us, as five ops
    # ~6 us). So the paths below run the same arithmetic with as few ops and bytes as they can:
    # q|k|v in one matmul (the softmax scale folded into q), Gemma's RMSNorm scales (and the backbone's
    # sqrt(width), see _rms_unit) folded into the matmul after them (the final one into the tied output
    # embedding), RMSNorm in three ops, RoPE for a step's tokens as one batched matmul by their rotation
    # matrices (built once per plan or chunk; the long prefix uses x*cos + roll(x)*sin), residual adds
    # fused into the matmuls (addmm), the mask into q @ k^T (baddbmm), a preallocated (static) KV cache
    # the prefix pass writes into directly, no mask where nothing is padded (a single row drops its
    # padding before the prefix pass: a masked key adds exactly nothing), and the flow time's
    # modulations for every Euler step computed at once. A plan's prefix pass takes <bos> along, so
    # the first token costs no step, and its steps run _TokenStep (buffers and views made once a plan);
    # the ViT runs on fused copies too (VisionTower._forward_fused). Each equals its reference path
    # (`use_cache=False`, `fast=False`) within float tolerance (tests/test_pi05_fast.py,
    # tests/test_pi05_fast_prefill.py).

    def _inference_weights(self, dtype: torch.dtype) -> "_FusedWeights":
        """Fused copies of the backbone's and the expert's weights for inference, rebuilt only when one of
        their parameters changes (an optimizer step or load_state_dict bumps its version) or the
        device/dtype does."""
        key = (dtype, self.embed.weight.device,
               *(_parameter_state(m) for m in (self.embed, self.backbone, self.final_norm, self.expert, self.expert_norm)))
        cached = self.__dict__.get("_fused")
        if cached is None or cached.key != key:
            with torch.no_grad():
                cached = _FusedWeights(self, dtype, key)
            self.__dict__["_fused"] = cached  # a plain attribute: not a parameter, not in the state dict
        return cached

    @staticmethod
    def _rope_tables(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
        """cos, sin [B, L, 1, d] for positions [B, L]: the same angles as `rope`, with x*cos + roll(x)*sin
        equal to it (roll by d/2 gives [x2, x1], so sin carries rotate-half's sign: [-sin, sin], taken as
        the sine of the angles negated in the first half, as cos(-a) == cos(a))."""
        angles = positions.float()[..., None] * _signed_frequencies(head_dim, theta, positions.device)
        return angles.cos()[:, :, None], angles.sin()[:, :, None]

    def _step_rope(self, positions: Tensor, dtype: torch.dtype) -> Tensor | tuple[Tensor, Tensor]:
        """RoPE for the tokens of decode or Euler steps at positions [B, L]: in float32 each token's
        rotation matrix [B, L, d, d] (x @ R == x*cos + roll(x)*sin: R holds cos on its diagonal and the
        signed sin where roll moves each element; one bmm a step instead of three ops); in lower
        precision the cos/sin tables (a bmm would run in that precision under autocast)."""
        d = self.cfg.head_dim
        cos, sin = self._rope_tables(positions, d, self.cfg.rope_theta)
        if dtype != torch.float32:
            return cos, sin
        swap = torch.eye(d, device=positions.device).roll(d // 2, 0)  # swap[i, j] = 1 where i = j + d/2 (mod d)
        return torch.diag_embed(cos[:, :, 0]) + swap * sin

    def _fast_prefix(self, w: "_FusedWeights", layout: tuple[Tensor, Tensor, Tensor, Tensor], room: int,
                     zeros: bool = False, tail: int = 0) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor | None]:
        """The backbone over a prefix layout (see _plan_layout) on the fused weights, each layer's keys and
        values written straight into a static cache [B, kvh, P + room, d] (`zeros`: its free slots zeroed,
        else left unset); the last layer stops at its keys/values, but for the last `tail` tokens (the
        target's <bos>), which go through it whole: their hidden states [B, tail, W] (before the final
        norm) come back too, so the first decoded token needs no step of its own. A single row drops its
        padded tokens first, so its cache holds valid tokens only and the steps after need no mask.
        Returns (keys, values, valid [B, P] of what the cache holds, the tail's hidden states or None)."""
        cfg = self.cfg
        x, valid, positions, mask = layout
        b = x.shape[0]
        if b == 1 and not bool(valid.all()):
            keep = valid[0].nonzero()[:, 0]
            x, valid, positions, mask = x[:, keep], valid[:, keep], positions[:, keep], mask[:, keep][:, :, keep]
        p, width = x.shape[1], x.shape[2]
        hq, kvh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        new = torch.zeros if zeros else torch.empty
        keys = [new(b, kvh, p + room, d, device=x.device, dtype=x.dtype) for _ in w.backbone]
        values = [new(b, kvh, p + room, d, device=x.device, dtype=x.dtype) for _ in w.backbone]
        rope = self._rope_tables(positions, d, cfg.rope_theta)
        groups = hq // kvh
        bias = torch.zeros(mask.shape, device=x.device, dtype=x.dtype).masked_fill_(~mask, float("-inf"))
        # tiled over the rows of the scores once (they are [B*kvh, rows, P], see below), so each layer's
        # q @ k^T adds it in the same op (baddbmm)
        bias = bias[:, None, None].expand(b, kvh, groups, p, p) if kvh > 1 else bias[:, :, None].expand(b, p, hq, p)
        bias = bias.reshape(b * kvh, groups * p, p)
        x = x.reshape(b * p, width)
        last = len(w.backbone) - 1
        for i, layer in enumerate(w.backbone):
            q, k, v = _qkv(layer, _rms_unit(x, w.floor), b, p, rope)
            keys[i][:, :, :p] = k.transpose(1, 2)
            values[i][:, :, :p] = v.transpose(1, 2)
            n = p  # the queries this layer attends for: all tokens, or in the last layer the tail's
            if i == last:
                if not tail:
                    return keys, values, valid, None
                n = tail
                q = q[:, p - n:]
                x = x.view(b, p, width)[:, p - n:].reshape(b * n, width)
                bias = bias.view(b * kvh, groups, p, p)[:, :, p - n:].reshape(b * kvh, groups * n, p) if kvh > 1 \
                    else bias[:, (p - n) * hq:]
            # attention as two matmuls and a softmax (sdpa's flash kernel took twice as long at these
            # sizes): the query heads sharing a kv head as one block of rows, the mask tiled over them.
            # Rows of the scores: with one kv head, token-major (the q heads of a token adjacent, as the
            # projection writes them); with several, [group, token] per kv head.
            q = (q.reshape(b, n, kvh, groups, d).permute(0, 2, 3, 1, 4) if kvh > 1 else q).reshape(b * kvh, groups * n, d)
            scores = torch.baddbmm(bias, q, keys[i][:, :, :p].reshape(b * kvh, p, d).transpose(1, 2))
            out = torch.bmm(scores.softmax(-1), values[i][:, :, :p].reshape(b * kvh, p, d))  # [B*kvh, rows, d]
            out = out.view(b, kvh, groups, n, d).permute(0, 3, 1, 2, 4) if kvh > 1 else out
            x = torch.addmm(x, out.reshape(b * n, hq * d), layer.o)
            h = _rms_unit(x, w.floor)
            # GELU on the gate while the matmul's output is still in cache, then times the up projection
            x = torch.addmm(x, _gelu_tanh_(h @ layer.gate).mul_(h @ layer.up), layer.down)
        return keys, values, valid, x.view(b, tail, width)

    def _fast_attention(self, layer: "_FusedLayer", h: Tensor, b: int, n: int, rope: Tensor | tuple[Tensor, Tensor],
                        keys: Tensor, values: Tensor, at: int, mask: Tensor | None,
                        rows: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """h [B*n, W] (n tokens a row) -> attention output [B*n, heads*d]. Writes these tokens' keys/values
        into the static cache `keys`/`values` [B, kvh, L_max, d] at [at, at+n) and attends to [0, at+n)
        under `mask` (additive, broadcast to [B, kvh, (heads/kvh)*n, at+n]; None: all of it).
        `rows` (batch, token, slot indices [M]): a step whose rows bring different numbers of tokens
        (jump-forward); only those tokens are written, each at its own slot, and the step attends to
        [0, at) under `mask` (bool) [B, 1, (heads/kvh)*n, at]."""
        cfg = self.cfg
        hq, kvh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q, k, v = _qkv(layer, h, b, n, rope)
        if rows is None:
            end = at + n
            keys[:, :, at:end] = k.transpose(1, 2)
            values[:, :, at:end] = v.transpose(1, 2)
        else:
            end, (bi, ti, si) = at, rows
            keys[bi, :, si] = k[bi, ti]
            values[bi, :, si] = v[bi, ti]
        # All queries of one call see the same keys (a decoded token; or the action tokens, which see
        # the whole context and each other), so the query heads sharing a kv head become one query
        # block: no copy of the keys per head. A jump-forward step's queries see different keys
        # (causal); its mask holds one row per query, tiled over the group.
        if rows is None and (n == 1 or kvh == 1) and q.dtype == torch.float32:
            # two matmuls and a softmax beat sdpa's flash kernel at these sizes; with one token or one kv
            # head the query block is q as the projection wrote it, token-major, so nothing is copied
            scores = q.reshape(b, kvh, (hq // kvh) * n, d) @ keys[:, :, :end].transpose(2, 3)
            if mask is not None:
                scores = scores + mask
            return (scores.softmax(-1) @ values[:, :, :end]).view(b * n, hq * d)
        q = q.permute(0, 2, 1, 3).reshape(b, kvh, (hq // kvh) * n, d)
        out = F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end], attn_mask=mask, scale=1.0)
        return out.reshape(b, hq, n, d).transpose(1, 2).reshape(b * n, hq * d)

    def _fast_backbone(self, w: "_FusedWeights", x: Tensor, rope: Tensor | tuple[Tensor, Tensor], keys: list[Tensor],
                       values: list[Tensor], at: int, mask: Tensor | None,
                       rows: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """The backbone's layers on the fused weights for one decode step's tokens x [B, n, W] (their
        keys/values written into the static cache, see _fast_attention; `rope` from _step_rope, per
        token); the hidden states before the final norm."""
        b, n, width = x.shape
        x = x.reshape(b * n, width)
        if isinstance(rope, Tensor):
            rope = rope.reshape(b * n, *rope.shape[-2:])
        for i, layer in enumerate(w.backbone):
            attended = self._fast_attention(layer, _rms_unit(x, w.floor), b, n, rope, keys[i], values[i], at, mask, rows)
            x = torch.addmm(x, attended, layer.o)
            x = torch.addmm(x, _geglu(layer, _rms_unit(x, w.floor)), layer.down)
        return x.view(b, n, width)

    def _decode_static(self, images: Tensor, prefix_ids: Tensor, prefix_mask: Tensor, context_ids: Tensor,
                       context_mask: Tensor, max_new: int, object_features: Tensor | None = None,
                       forced: "_Forced | None" = None) -> tuple[Tensor, Tensor]:
        """Greedy decoding with a static KV cache. The prefix pass takes the target's <bos> along (its
        tokens are laid out as the reference's first step), so it gives the first token's logits; each
        step after feeds the token chosen last (_TokenStep). Returns (ids [B, n], logits [B, n, V])."""
        cfg = self.cfg
        forced = forced or _Forced(None, cfg.pad_id)
        layout = self._plan_layout(images, prefix_ids, prefix_mask, context_ids, context_mask, object_features,
                                   bos=True)
        dtype = layout[0].dtype
        w = self._inference_weights(dtype)
        room = max_new - 1  # the last chosen token is never fed
        # zeroed: a step attends to the whole cache, its unwritten slots masked (and finite: 0 * NaN is NaN)
        keys, values, valid, x = self._fast_prefix(w, layout, room, zeros=True, tail=1)
        b, p = valid.shape  # p counts <bos>
        dev = valid.device
        # each step's additive mask over the whole cache [B*kvh, 1, L]: the valid slots written so far
        total = p + room
        unwritten = torch.arange(total, device=dev)[None] > (p + torch.arange(room, device=dev))[:, None]
        hide = unwritten[:, None] | F.pad(~valid, (0, room))[None]  # [room, B, L]
        bias = torch.zeros(hide.shape, device=dev, dtype=dtype).masked_fill_(hide, float("-inf"))
        kvh = cfg.num_kv_heads
        bias = bias[:, :, None, None].expand(-1, -1, kvh, -1, -1).reshape(room, b * kvh, 1, total).unbind(0)
        start = valid.sum(1)  # the position of the first token fed after <bos>
        rope = self._step_rope(start[:, None] + torch.arange(room, device=dev)[None], dtype)
        ropes = rope.unbind(1) if isinstance(rope, Tensor) else list(zip(*(t.unbind(1) for t in rope)))
        step_token = _TokenStep(w, cfg, keys, values, p) if room else None
        x = x[:, 0]
        done: Tensor | None = None  # rows past their <eos>, once one is
        ids: list[Tensor] = []
        scores: list[Tensor] = []
        for step in range(max_new):
            if step:  # feed the token chosen last; step 0's hidden state came with the prefix
                x = step_token(F.embedding(nxt, w.embed_in), ropes[step - 1], step - 1, bias[step - 1])
            logits = torch.mm(_rms_unit(x, w.floor), w.embed_out).float()
            nxt = forced.apply(step, logits.argmax(-1))
            if done is not None:
                nxt = torch.where(done, cfg.pad_id, nxt)
            ids.append(nxt)
            scores.append(logits)
            ended = nxt == cfg.eos_id
            if bool(ended.any()):
                done = ended if done is None else done | ended
                if bool(done.all()):
                    break
        return torch.stack(ids, 1), torch.stack(scores, 1)

    def _decode_constrained(self, images: Tensor, prefix_ids: Tensor, prefix_mask: Tensor, context_ids: Tensor,
                            context_mask: Tensor, max_new: int, object_features: Tensor | None, forced: "_Forced",
                            constraints: "Sequence[PlanConstraint | None]", jump: bool,
                            want_scores: bool) -> tuple[Tensor, Tensor | None]:
        """Greedy decoding on the static cache where each constrained row may write only what its
        automaton allows (see `generate`). A step feeds each row the tokens it has appended since the
        last step: one where the model chose, or the chosen token and the span forced after it
        (jump-forward), so rows bring different numbers of tokens: each is written at its own row's
        next cache slot, attends causally, and padding is neither written nor seen. Slots the step
        attends to but a row has not written stay zero (masked; zeros keep NaN out of the sums).
        Returns (ids [B, n], logits [B, n, V] or None)."""
        cfg = self.cfg
        layout = self._plan_layout(images, prefix_ids, prefix_mask, context_ids, context_mask, object_features)
        dtype = layout[0].dtype
        w = self._inference_weights(dtype)
        caps = [max(max_new, c.longest) if c is not None else max_new for c in constraints]
        keys, values, valid, _ = self._fast_prefix(w, layout, max(caps), zeros=True)
        b, p = valid.shape
        dev = valid.device
        start = valid.sum(1)  # first target position
        groups = cfg.num_heads // cfg.num_kv_heads
        nodes = [c.root if c is not None else None for c in constraints]
        out: list[list[int]] = [[] for _ in range(b)]  # the tokens written, row by row (without <bos>)
        scores: list[list[Tensor]] = [[] for _ in range(b)]
        feed: list[list[int]] = [[cfg.bos_id] for _ in range(b)]  # what each row brings to the next step
        choose = [True] * b  # False: the row is finished; it is fed only for the scores of its last span
        fed = [0] * b  # tokens of the row in the cache

        def write(r: int, tokens: list[int]) -> list[int]:
            """Row r writes these tokens; returns what it is fed next: them all, or where the row finishes
            (<eos>, its budget) all but the last, and only for their scores (the logits that chose a
            token come from feeding the token before it)."""
            tokens = tokens[: caps[r] - len(out[r])]
            out[r] += tokens
            if cfg.eos_id in tokens or len(out[r]) >= caps[r]:
                choose[r] = False
                return tokens[:-1] if want_scores else []
            return tokens

        for r, c in enumerate(constraints):  # the automaton's opening span (the line, "So:") goes in with <bos>
            if c is not None and jump:
                span, nodes[r] = c.forced(nodes[r])
                feed[r] = [cfg.bos_id] + write(r, span)
        while any(feed):
            n = max(map(len, feed))
            lengths = torch.tensor([len(f) for f in feed], device=dev)
            done_before = torch.tensor(fed, device=dev)
            tokens = torch.tensor([f + [cfg.pad_id] * (n - len(f)) for f in feed], device=dev)
            j = torch.arange(n, device=dev)
            bi, ti = (j[None] < lengths[:, None]).nonzero(as_tuple=True)
            slots = p + done_before[bi] + ti
            end = p + int((done_before + lengths).max())
            k = torch.arange(end - p, device=dev)
            seen = (k[None, None] <= done_before[:, None, None] + j[None, :, None]) \
                & (k[None, None] < (done_before + lengths)[:, None, None])  # [B, n, end - p]
            mask = torch.cat([valid[:, None, :].expand(b, n, p), seen], -1)[:, None].repeat(1, 1, groups, 1)
            rope = self._step_rope(start[:, None] + done_before[:, None] + j[None], dtype)
            x = self._fast_backbone(w, F.embedding(tokens, w.embed_in), rope, keys, values, end, mask,
                                    (bi, ti, slots))
            last = (lengths - 1).clamp(min=0)
            hidden = x if want_scores else x[torch.arange(b, device=dev), last][:, None]
            logits = (_rms_unit(hidden, w.floor) @ w.embed_out).float()  # [B, n or 1, V]
            for r in range(b):
                n_r = len(feed[r])
                if not n_r:
                    continue
                if want_scores:
                    scores[r] += logits[r, :n_r].unbind(0)
                fed[r] += n_r
                feed[r] = []
                if not choose[r]:
                    continue
                row = logits[r, n_r - 1 if want_scores else 0]
                c = constraints[r]
                if c is None:  # decoded freely: the forced ids first, then the argmax, one token a step
                    token = forced.at(r, len(out[r]))
                    feed[r] = write(r, [int(row.argmax()) if token is None else token])
                    continue
                allowed = c.allowed(nodes[r])
                token = allowed[int(row[allowed].argmax())]
                nodes[r] = c.advance(nodes[r], token)
                span, nodes[r] = c.forced(nodes[r]) if jump else ([], nodes[r])
                feed[r] = write(r, [token] + span)
        n = max(map(len, out))
        ids = torch.tensor([row + [cfg.pad_id] * (n - len(row)) for row in out], dtype=torch.long, device=dev)
        if not want_scores:
            return ids, None
        pad = torch.zeros(cfg.vocab_size, device=dev)
        return ids, torch.stack([torch.stack(row + [pad] * (n - len(row))) for row in scores])

    def _sample_actions_fast(self, layout: tuple[Tensor, Tensor, Tensor, Tensor], start: Tensor, x: Tensor,
                             steps: int) -> Tensor:
        """sample_actions on the static cache: the backbone's keys/values of [base | subtask] (`layout`,
        the first action position `start` [B], as _action_layout gives them) written once into buffers
        with room for the action tokens, which every Euler step's expert overwrites; the flow time's
        modulations of every step at once; RoPE and the mask once. x: the noise [B, H, A]."""
        cfg = self.cfg
        b, horizon, action_dim = x.shape
        dtype = layout[0].dtype
        w = self._inference_weights(dtype)
        keys, values, valid, _ = self._fast_prefix(w, layout, horizon)
        lc = valid.shape[1]
        dev = x.device
        mask = None  # every context key valid (no padding, or a single row's dropped)
        if not bool(valid.all()):
            mask = torch.zeros(b, 1, 1, lc + horizon, device=dev, dtype=dtype)
            mask[:, 0, 0, :lc].masked_fill_(~valid, float("-inf"))
        rope = self._step_rope(start[:, None] + torch.arange(horizon, device=dev)[None], dtype)
        if isinstance(rope, Tensor):
            rope = rope.flatten(0, 1)  # [B*H, d, d]
        dt = -1.0 / steps
        t = torch.tensor([1.0 + i * dt for i in range(steps)], device=dev).repeat_interleave(b)  # [steps * B]
        cond = self.time_mlp(time_embedding(t, cfg.expert_width).to(dtype))
        # per layer and Euler step: (1 + scale, shift, gate) of both norms, each [B*H, D]
        mods = [list(zip(_modulation(blk.attn_norm, cond, steps, b, horizon),
                         _modulation(blk.mlp_norm, cond, steps, b, horizon))) for blk in self.expert]
        final_mod = _modulation(self.expert_norm, cond, steps, b, horizon)
        eps = w.expert_eps
        x = x.float()
        for i in range(steps):
            h = self.action_in(x.to(dtype)).view(b * horizon, -1)
            for j, layer in enumerate(w.expert):
                (scale, shift, gate), (mscale, mshift, mgate) = mods[j][i]
                n = torch.addcmul(shift, _rms(h, eps, torch.float32), scale).to(dtype)
                attended = self._fast_attention(layer, n, b, horizon, rope, keys[j], values[j], lc, mask)
                h = torch.addcmul(h, attended @ layer.o, gate)
                n = torch.addcmul(mshift, _rms(h, eps, torch.float32), mscale).to(dtype)
                h = torch.addcmul(h, _geglu(layer, n) @ layer.down, mgate)
            scale, shift, _ = final_mod[i]
            n = torch.addcmul(shift, _rms(h, eps, torch.float32), scale).to(dtype)
            x = torch.add(x, self.action_out(n).view(b, horizon, action_dim).float(), alpha=dt)
        return x


# ---------------------------------------------------------------------------------------------
# fused inference weights (see Pi05Model's "inference fast paths")
# ---------------------------------------------------------------------------------------------


class _Forced:
    """Tokens a decode must emit first, row by row ([B, F], pad past a row's end): step `i` takes
    column i where it is not pad, the model's choice elsewhere."""

    def __init__(self, ids: Tensor | None, pad_id: int):
        self.ids, self.pad_id = ids, pad_id

    def apply(self, step: int, chosen: Tensor) -> Tensor:
        if self.ids is None or step >= self.ids.shape[1]:
            return chosen
        column = self.ids[:, step].to(chosen.device)
        return torch.where(column != self.pad_id, column, chosen)

    def at(self, row: int, step: int) -> int | None:
        """Row `row`'s forced token at `step`, or None where the model chooses."""
        if self.ids is None or step >= self.ids.shape[1] or int(self.ids[row, step]) == self.pad_id:
            return None
        return int(self.ids[row, step])


class _FusedLayer:
    """One block's weights as the fast paths read them: transposed for x @ w; q|k|v one matrix, its q
    columns scaled by attention's 1/sqrt(d) (RoPE is linear, so the scale commutes with it); and
    (backbone) Gemma's RMSNorm scale (1 + weight) folded into the rows of the matrices its output
    feeds: (x_hat * s) @ W == x_hat @ (s[:, None] * W), with the sqrt(width) that _rms_unit leaves
    out. Gate and up stay two matrices: at one token a step, two 1 MB matmuls ran faster here than one
    2 MB one (and one [W, 2 * mlp] matmul gained nothing on a prefix)."""

    def __init__(self, block: GemmaBlock, cfg: Pi05Config, dtype: torch.dtype):
        hq, kvh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        qkv = torch.cat([block.q.weight / math.sqrt(d), block.k.weight, block.v.weight]).T.float()  # [W, (hq+2kvh)d]
        gate, up = block.mlp.gate.weight.T.float(), block.mlp.up.weight.T.float()  # [W, mlp]
        if not block.adaptive:
            root_w = math.sqrt(qkv.shape[0])
            qkv = qkv * ((1.0 + block.attn_norm.weight.float()) * root_w)[:, None]
            scale = ((1.0 + block.mlp_norm.weight.float()) * root_w)[:, None]
            gate, up = gate * scale, up * scale
        self.qkv = qkv.contiguous().to(dtype)
        self.gate = gate.contiguous().to(dtype)
        self.up = up.contiguous().to(dtype)
        self.qk_width = (hq + kvh) * d
        self.heads, self.kv_heads, self.head_dim = hq, kvh, d
        self.o = block.o.weight.T.contiguous().to(dtype)
        self.down = block.mlp.down.weight.T.contiguous().to(dtype)


class _FusedWeights:
    def __init__(self, model: "Pi05Model", dtype: torch.dtype, key: tuple):
        self.key = key
        cfg = model.cfg
        self.backbone = [_FusedLayer(block, cfg, dtype) for block in model.backbone]
        self.expert = [_FusedLayer(block, cfg, dtype) for block in model.expert]
        self.embed_in = (model.embed.weight * math.sqrt(cfg.width)).to(dtype)
        # the final norm's scale (and _rms_unit's sqrt(width)) folded into the tied output embedding, as
        # the layers' norms
        scale = (1.0 + model.final_norm.weight.float()) * math.sqrt(cfg.width)
        self.embed_out = (model.embed.weight.T.float() * scale[:, None]).to(dtype)
        # the backbone's RMSNorm floor sqrt(width * eps) (_rms_unit) and the expert's eps as 0-dim float32
        # tensors: a tensor operand costs less than a Python number
        self.floor = torch.tensor(math.sqrt(cfg.width * model.final_norm.eps))
        self.expert_eps = torch.tensor(model.expert_norm.eps)


class _TokenStep:
    """One token a row through the backbone's layers on the fused weights and a plan's static cache
    (keys/values [B, kvh, L, d]), in as few torch ops as the arithmetic allows: past reading the
    weights, a decoded token's cost is its ~100 small ops, a few microseconds each and more between the
    large matmuls that evict their code and data. So the buffers the projections write into, and every
    view of them and of the cache (q, k, v; each slot; keys transposed), are made once a plan, and a
    step attends to the whole cache under an additive mask that hides the slots not written yet, so
    nothing is sliced per step: about 20 ops a layer where _fast_backbone takes ~35 (measured ~10% less
    time a token; the weights' ~15 MB read is ~0.7 ms of its ~1.1). The query heads sharing a kv head
    form one block of rows, so no key is copied per head."""

    def __init__(self, w: _FusedWeights, cfg: Pi05Config, keys: list[Tensor], values: list[Tensor], first: int):
        b, kvh, total, d = keys[0].shape
        hq = cfg.num_heads
        self.w, self.b, self.hq, self.kvh, self.groups, self.d = w, b, hq, kvh, hq // kvh, d
        like = dict(device=keys[0].device, dtype=keys[0].dtype)
        self.qkv = torch.empty(b, (hq + 2 * kvh) * d, **like)
        self.qk_in = self.qkv[:, : (hq + kvh) * d].view(b, hq + kvh, d)
        self.v_new = self.qkv[:, (hq + kvh) * d:].view(b, kvh, d)
        self.qk = torch.empty(b, hq + kvh, d, **like)  # RoPE applied
        self.k_new = self.qk[:, hq:]
        # the queries as [B*kvh, groups, d] rows: a view of the buffer for one row, a copy a step for more
        self.q = self.qk[:, :hq].view(kvh, hq // kvh, d) if b == 1 else None
        # per layer: the fused weights, the key and value view [B, kvh, d] of each slot from `first` on (the
        # tokens fed one by one), keys [B*kvh, d, L] and values [B*kvh, L, d]
        self.layers = [(layer, k[:, :, first:].unbind(2), v[:, :, first:].unbind(2),
                        k.view(b * kvh, total, d).transpose(1, 2), v.view(b * kvh, total, d))
                       for layer, k, v in zip(w.backbone, keys, values)]

    def __call__(self, x: Tensor, rope: Tensor | tuple[Tensor, Tensor], i: int, bias: Tensor) -> Tensor:
        """The i-th token fed x [B, W] (embedded), written at cache slot first + i, RoPE `rope` (a row's
        rotation matrix [B, d, d] or its cos/sin [B, 1, d]), `bias` [B*kvh, 1, L] -> hidden [B, W] before
        the final norm."""
        w, b, q, floor = self.w, self.b, self.q, self.w.floor
        matrix = isinstance(rope, Tensor)
        for layer, key_slots, value_slots, keys_t, values_3d in self.layers:
            torch.mm(_rms_unit(x, floor), layer.qkv, out=self.qkv)
            if matrix:
                torch.bmm(self.qk_in, rope, out=self.qk)
            else:
                self.qk.copy_(_rotate(self.qk_in, rope))
            key_slots[i].copy_(self.k_new)
            value_slots[i].copy_(self.v_new)
            if self.q is None:
                q = self.qk[:, : self.hq].reshape(b * self.kvh, self.groups, self.d)
            attended = torch.bmm(torch.baddbmm(bias, q, keys_t).softmax(-1), values_3d)  # [B*kvh, groups, d]
            x = torch.addmm(x, attended.view(b, -1), layer.o)
            x = torch.addmm(x, _geglu(layer, _rms_unit(x, floor)), layer.down)
        return x


def _rms(x: Tensor, eps: Tensor, out_dtype: torch.dtype | None = None) -> Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dim, in float32 (as RMSNorm), returned as x's dtype or
    `out_dtype`: four small ops (the norm, then norm^2 / W + eps in one), where F.rms_norm takes about
    fifteen on this CPU."""
    out_dtype = out_dtype or x.dtype
    if x.dtype != torch.float32:
        x = x.float()
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    x = x * torch.addcmul(eps, norm, norm, value=1.0 / x.shape[-1]).rsqrt_()
    return x if out_dtype == torch.float32 else x.to(out_dtype)


def _rms_unit(x: Tensor, floor: Tensor) -> Tensor:
    """The backbone's RMSNorm over the last dim but for a factor sqrt(W), which its fused matrices
    carry: x / sqrt(|x|^2 + W * eps) == x / sqrt(mean(x^2) + eps) / sqrt(W), with floor = sqrt(W * eps),
    in float32 (as RMSNorm), returned as x's dtype. Three small ops where _rms takes four: a decoded
    token runs eight norms, and its cost beyond reading the weights is its small ops."""
    y = x if x.dtype == torch.float32 else x.float()
    y = y / torch.hypot(torch.linalg.vector_norm(y, dim=-1, keepdim=True), floor)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def _qkv(layer: _FusedLayer, h: Tensor, b: int, n: int,
         rope: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """h [B*n, W] -> q [B, n, hq, d] (scaled), k and v [B, n, kvh, d], RoPE applied to q and k: `rope`
    either rotation matrices [B*n, d, d] (Pi05Model._step_rope) or cos/sin tables (_rope_tables)."""
    d, heads = layer.head_dim, layer.heads + layer.kv_heads
    qkv = h @ layer.qkv
    qk = qkv[:, : layer.qk_width]
    if isinstance(rope, Tensor):
        qk = _rotate(qk.view(b * n, heads, d), rope).view(b, n, heads, d)
    else:
        qk = _rotate(qk.view(b, n, heads, d), rope)
    return qk[:, :, : layer.heads], qk[:, :, layer.heads:], qkv[:, layer.qk_width:].view(b, n, layer.kv_heads, d)


def _rotate(x: Tensor, rope: Tensor | tuple[Tensor, Tensor]) -> Tensor:
    """RoPE on x [..., heads, d]: by rotation matrices [N, d, d] (x [N, heads, d]; one batched matmul) or
    by cos/sin tables broadcast to x (x*cos + roll(x)*sin, see Pi05Model._rope_tables)."""
    if isinstance(rope, Tensor):
        return torch.bmm(x, rope)
    cos, sin = rope
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin).to(x.dtype)


def _gelu_tanh_(x: Tensor) -> Tensor:
    """F.gelu(x, approximate="tanh") for many tokens at once, by 0.5 * (1 + tanh(z)) == sigmoid(2z):
    four elementwise ops (in place on x where it is float32) that ran ~2.5x faster here than torch's tanh
    GELU on a prefix's [88, 1024] (equal within float rounding)."""
    if x.dtype != torch.float32:
        return F.gelu(x, approximate="tanh")
    c = 2.0 * math.sqrt(2.0 / math.pi)
    z = torch.addcmul(torch.tensor(c, device=x.device), x, x, value=c * 0.044715)  # 2 * sqrt(2/pi) * (1 + 0.044715 x^2)
    return x.mul_(z.mul_(x).sigmoid_())


def _geglu(layer: _FusedLayer, h: Tensor) -> Tensor:
    return F.gelu(h @ layer.gate, approximate="tanh") * (h @ layer.up)


def _modulation(norm: AdaRMSNorm, cond: Tensor, steps: int, b: int, horizon: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """An adaptive norm's (1 + scale, shift, gate) for each Euler step at once: cond [steps*B, C] ->
    per step three [B*H, D], one row per action token (scale and shift in float32, as AdaRMSNorm
    applies them)."""
    mod = norm.modulation(cond).view(steps, b, 1, -1).expand(-1, -1, horizon, -1).reshape(steps, b * horizon, -1)
    scale, shift, gate = mod.chunk(3, dim=-1)
    return list(zip((1.0 + scale.float()).unbind(0), shift.float().unbind(0), gate.unbind(0)))


def count_parameters(model: nn.Module) -> dict[str, int]:
    groups = {"vision": 0, "backbone": 0, "expert": 0}
    for name, p in model.named_parameters():
        if name.startswith("vision"):
            groups["vision"] += p.numel()
        elif name.startswith(("embed", "backbone", "final_norm")):
            groups["backbone"] += p.numel()
        else:
            groups["expert"] += p.numel()
    groups["total"] = sum(groups.values())
    return groups
