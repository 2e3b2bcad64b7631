"""Configuration of the low-level VLA: one dataclass, two size presets.

The design follows what this 2-core CPU can train (shared/DESIGN.md, "What this 2-core CPU taught"):
spatial resolution through convolutions and keypoints rather than long token sequences.

- `tiny`: for tests (seconds on a CPU).
- `small`: the shipped default (about 0.35 M parameters, trains in well under an hour on one core).
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.checkpoint import ConfigFile, preset_config

CAMERAS = ("front", "wrist")
HEADS = ("regression", "flow")
REGRESSION_LOSSES = ("l1", "l2")
# fields a resumed training run may change: none changes a parameter's shape
RESUMABLE_FIELDS = ("regression_loss", "random_shift_pad", "n_action_steps", "flow_steps")


@dataclass
class VlaConfig(ConfigFile):
    """The VLA's dims and switches; as config.json through ConfigFile (policies/checkpoint.py)."""

    # vocabulary (set from the tokenizer when one is trained)
    vocab_size: int = 512
    pad_id: int = 0

    # perception, one conv stack per camera: 3x3 convs with GroupNorm + ReLU, FiLM from the subtask
    # text on the last `film_layers`, then a spatial softmax giving `keypoints` (x, y) per camera
    cameras: tuple[str, ...] = CAMERAS
    image_size: int = 64
    conv_channels: tuple[int, ...] = (32, 32, 64, 64)
    conv_strides: tuple[int, ...] = (2, 2, 1, 1)
    group_norm_groups: int = 8
    film_layers: int = 2
    keypoints: int = 32

    # language: token embeddings + a small transformer encoder, mean-pooled
    max_subtask_tokens: int = 16
    text_width: int = 64
    text_layers: int = 1
    text_heads: int = 4

    # policy head: an MLP over both cameras' keypoints, the state and the text embedding
    state_dim: int = 8
    action_dim: int = 5
    chunk_size: int = 10  # actions predicted per call
    n_action_steps: int = 4  # of those, how many are executed before the policy is asked again
    hidden_dim: int = 256
    head_layers: int = 2
    head: str = "regression"  # "regression": the chunk regressed directly; "flow": flow matching (pi0's way)
    # The regression loss. "l1" predicts each action's median, which stalls where the expert's motion
    # alternates (its final descent onto a bowl is 0, -1.5 cm, 0, 0, ...: the median is no motion);
    # "l2" predicts the mean, which keeps moving toward the goal (measured: see the model card).
    regression_loss: str = "l1"
    flow_steps: int = 10  # Euler steps when sampling with the flow head
    time_dim: int = 32

    # training-time augmentation (no effect at inference)
    random_shift_pad: int = 4

    preset: str = "custom"

    def validate(self) -> None:
        if len(self.conv_channels) != len(self.conv_strides) or not self.conv_channels:
            raise ValueError("conv_channels and conv_strides need the same, non-zero length")
        if not 0 <= self.film_layers <= len(self.conv_channels):
            raise ValueError(f"film_layers must be in [0, {len(self.conv_channels)}], got {self.film_layers}")
        if any(c % self.group_norm_groups for c in self.conv_channels):
            raise ValueError(f"every conv width must be a multiple of group_norm_groups={self.group_norm_groups}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.regression_loss not in REGRESSION_LOSSES:
            raise ValueError(f"regression_loss must be one of {REGRESSION_LOSSES}, got {self.regression_loss!r}")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(f"n_action_steps must be in [1, chunk_size={self.chunk_size}], got {self.n_action_steps}")
        if self.text_width % self.text_heads:
            raise ValueError("text_width must be a multiple of text_heads")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")


def tiny() -> VlaConfig:
    return VlaConfig(image_size=32, conv_channels=(8, 8, 16, 16), group_norm_groups=4, keypoints=8,
                     text_width=16, text_heads=2, hidden_dim=32, chunk_size=4, n_action_steps=2,
                     max_subtask_tokens=12, time_dim=8, random_shift_pad=2, preset="tiny")


def small() -> VlaConfig:
    # 7 of 10 actions executed per call: measured best of 2 / 4 / 7 / 10 (see the VLA model card)
    return VlaConfig(regression_loss="l2", n_action_steps=7, preset="small")


PRESETS = {"tiny": tiny, "small": small}


def make_config(preset: str, **overrides) -> VlaConfig:
    return preset_config(PRESETS, preset, overrides)
