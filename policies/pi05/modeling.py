"""The π0.5-style model in one file, read top to bottom.

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

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policies.augment import random_shift
from policies.pi05.configuration import Pi05Config
from policies.pi05.vision import ConvResampler

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
        layers: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate(widths):
            stride = 2 if i < downsamples else 1
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.ReLU()]
            cin = cout
        self.net = nn.Sequential(*layers)

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
        x = images.permute(0, 3, 1, 2).to(self.pos.dtype) / 127.5 - 1.0
        if self.training and self.shift_pad > 0:
            x = random_shift(x, self.shift_pad)
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.proj(self.norm(self.blocks(x)))


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
        self.vision = ConvResampler(cfg) if cfg.vision_stem == "resampler" else VisionTower(cfg)
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

    def embed_prefix(self, images: Tensor, prefix_ids: Tensor, prefix_mask: Tensor) -> tuple[Tensor, Tensor]:
        """images uint8 [B, n_cam, H, W, 3], prefix_ids/mask [B, Lt] -> tokens [B, P, W], valid [B, P]."""
        b, n_cam = images.shape[:2]
        img = self.vision(images.flatten(0, 1)).reshape(b, n_cam * self.cfg.image_tokens_per_camera, -1)
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
        self, x: Tensor, positions: Tensor, mask: Tensor, past: KVCache | None = None
    ) -> tuple[Tensor, KVCache]:
        """x [B, L, W] at positions [B, L]; mask [B, L, L_past + L]. Returns the final-normed hidden
        states and, per layer, the keys/values of past + these tokens (the new cache)."""
        cache: KVCache = []
        for i, block in enumerate(self.backbone):
            h, _ = block.norm("attn", x, None)
            q, k, v = self._project_qkv(block, h, positions)
            if past is not None:
                k = torch.cat([past[i][0], k], dim=2)
                v = torch.cat([past[i][1], v], dim=2)
            cache.append((k, v))
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
        dev = valid.device
        seg = torch.cat([torch.full((v.shape[1],), s, dtype=torch.long, device=dev) for s, v in segments])
        rules = torch.zeros(5, 5, dtype=torch.bool, device=dev)
        for q, k in cls.ALLOWED:
            rules[q, k] = True
        allowed = rules[seg[:, None], seg[None, :]]
        idx = torch.arange(seg.shape[0], device=dev)
        causal_seg = (seg == cls.TARGET) | (seg == cls.ACTION_TOKENS)
        same = (seg[:, None] == seg[None, :]) & causal_seg[:, None]
        allowed = allowed & (~same | (idx[None, :] <= idx[:, None]))
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
        base, base_valid = self.embed_prefix(batch["images"], batch["prefix_ids"], batch["prefix_mask"])
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
        logits = self.logits(hidden[:, p + c + s: p + c + s + t_len]).float()
        labels = batch["target_ids"][:, 1:].masked_fill(~batch["target_mask"][:, 1:].bool(), -100)
        text_loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)

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
        self, images: Tensor, prefix_ids: Tensor, prefix_mask: Tensor, context_ids: Tensor, context_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, KVCache]:
        """Run [base | context] once. Returns (tokens, valid [B, P+C], positions, per-layer KV cache)."""
        base, base_valid = self.embed_prefix(images, prefix_ids, prefix_mask)
        ctx_valid = context_mask.bool()
        x = torch.cat([base, self.embed_text(context_ids).to(base.dtype)], 1)
        positions = torch.cat([base_valid.long().cumsum(1) - 1,
                               self.positions_from(base_valid.sum(1), ctx_valid.shape[1])], 1)
        mask = self.segment_mask([(self.BASE, base_valid), (self.CONTEXT, ctx_valid)])
        _, cache = self.run_backbone(x, positions, mask)
        return x, torch.cat([base_valid, ctx_valid], 1), positions, cache

    @torch.no_grad()
    def generate(
        self, images: Tensor, prefix_ids: Tensor, prefix_mask: Tensor, context_ids: Tensor, context_mask: Tensor,
        max_new_tokens: int | None = None, use_cache: bool = True,
    ) -> Tensor:
        """Greedy decoding of "thought So: subtask <eos>" after [base | context]. Returns ids [B, n]
        (without <bos>; each row stops at its first <eos>, later positions are <pad>).
        `use_cache=False` recomputes the whole sequence every step (the reference for the cache)."""
        cfg = self.cfg
        max_new = max_new_tokens or cfg.max_target_tokens - 1
        b, dev = images.shape[0], images.device
        base, base_valid = self.embed_prefix(images, prefix_ids, prefix_mask)
        ctx_valid = context_mask.bool()
        start = base_valid.sum(1) + ctx_valid.sum(1)  # first target position
        tokens = torch.full((b, 1), cfg.bos_id, dtype=torch.long, device=dev)
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        out: list[Tensor] = []
        if use_cache:
            _, valid, _, cache = self.encode_plan_prefix(images, prefix_ids, prefix_mask, context_ids, context_mask)
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
            nxt = self.logits(hidden[:, -1]).float().argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, cfg.pad_id), nxt)
            out.append(nxt)
            done = done | (nxt == cfg.eos_id)
            tokens = torch.cat([tokens, nxt[:, None]], 1)
            if bool(done.all()):
                break
        return torch.stack(out, 1)

    # -- inference: low level ------------------------------------------------------------------

    def encode_action_context(
        self, images: Tensor, prefix_ids: Tensor, prefix_mask: Tensor, subtask_ids: Tensor, subtask_mask: Tensor
    ) -> tuple[KVCache, Tensor, Tensor]:
        """Backbone keys/values of [base | subtask], computed once per action chunk.
        Returns (cache, valid [B, P+S], first action position [B])."""
        base, base_valid = self.embed_prefix(images, prefix_ids, prefix_mask)
        sub_valid = subtask_mask.bool()
        x = torch.cat([base, self.embed_text(subtask_ids).to(base.dtype)], 1)
        n_base = base_valid.sum(1)
        positions = torch.cat([base_valid.long().cumsum(1) - 1, self.positions_from(n_base, sub_valid.shape[1])], 1)
        mask = self.segment_mask([(self.BASE, base_valid), (self.SUBTASK, sub_valid)])
        _, cache = self.run_backbone(x, positions, mask)
        return cache, torch.cat([base_valid, sub_valid], 1), n_base + sub_valid.sum(1)

    @torch.no_grad()
    def sample_actions(
        self, images: Tensor, prefix_ids: Tensor, prefix_mask: Tensor, subtask_ids: Tensor, subtask_mask: Tensor,
        noise: Tensor | None = None, num_steps: int | None = None, cache_context: bool = True,
    ) -> Tensor:
        """Integrate the flow from noise (t=1) to actions (t=0) with Euler steps. Returns normalised
        actions [B, H, A]. `cache_context=False` recomputes the backbone every step (for benchmarks)."""
        cfg = self.cfg
        steps = num_steps or cfg.flow_steps
        b = images.shape[0]
        if noise is None:
            noise = torch.randn(b, cfg.action_horizon, cfg.action_dim, device=images.device)
        x = noise.float()
        dt = -1.0 / steps
        args = (images, prefix_ids, prefix_mask, subtask_ids, subtask_mask)
        ctx = self.encode_action_context(*args) if cache_context else None
        for i in range(steps):
            if not cache_context:
                ctx = self.encode_action_context(*args)
            cache, valid, start = ctx
            t = torch.full((b,), 1.0 + i * dt, device=x.device)
            v = self.run_expert(x.to(cache[0][0].dtype), t, cache, valid, start).float()
            x = x + dt * v
        return x


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
