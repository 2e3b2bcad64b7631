"""The low-level VLA as a hivla LowLevelPolicy, plus its checkpoint reading and writing.

    policy = load_vla("policies/checkpoints/vla", device="cpu", dtype="fp32")
    chunk = policy.predict_action_chunk(obs, "pick up the red block")   # float32 [chunk_size, A]
    low = VlaLowLevel(policy)   # LowLevelPolicy: act(obs, subtask) -> the first n_action_steps of a chunk

A checkpoint directory holds config.json, model.safetensors, tokenizer.json and norm_stats.json
(never pickle); anything truncated, missing or mismatched raises CheckpointError.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from policies.checkpoint import (
    CHECKPOINT_FILES, CheckpointError, LoadedPolicy, check_safetensors_file, load_checkpoint_dir, require_files,
    save_checkpoint_dir,
)
from policies.types import ActionChunk, Observation
from policies.vla.configuration import VlaConfig
from policies.vla.modeling import VlaModel
from policies.vla.processor import VlaProcessor

KIND = "vla"


def save_checkpoint(path: str | Path, model: VlaModel, processor: VlaProcessor, extra: dict | None = None) -> Path:
    return save_checkpoint_dir(path, model, KIND, {
        "config.json": model.cfg.save,
        "tokenizer.json": lambda p: processor.tok.save(str(p)),
        "norm_stats.json": processor.stats.save,
    }, extra)


def load_checkpoint(path: str | Path) -> tuple[VlaModel, VlaProcessor]:
    path = require_files(path, CHECKPOINT_FILES)
    kind = check_safetensors_file(path / "model.safetensors").get("__metadata__", {}).get("hivla")
    if kind not in (None, KIND):
        raise CheckpointError(f"{path} is a {kind!r} checkpoint, not a low-level VLA; use the spec '{kind}:{path}'")
    return load_checkpoint_dir(path, VlaConfig, VlaModel, VlaProcessor)


class VlaPolicy(LoadedPolicy):
    """A loaded model + processor (on its device, in its dtype: LoadedPolicy) with the LeRobot-style
    inference API."""

    model: VlaModel
    processor: VlaProcessor
    cfg: VlaConfig

    def __init__(self, model: VlaModel, processor: VlaProcessor, device: str = "cpu", dtype: str = "fp32"):
        super().__init__(model, processor, device, dtype)
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype: str = "fp32") -> "VlaPolicy":
        model, processor = load_checkpoint(path)
        return cls(model, processor, device=device, dtype=dtype)

    def _text(self, subtask: str) -> tuple[torch.Tensor, torch.Tensor]:
        if subtask not in self._text_cache:
            ids, mask = self.processor.subtask_ids(subtask)
            self._text_cache[subtask] = (torch.from_numpy(ids)[None].to(self.device),
                                         torch.from_numpy(mask)[None].to(self.device))
        return self._text_cache[subtask]

    @torch.no_grad()
    def predict_action_chunk(self, obs: Observation, subtask: str) -> ActionChunk:
        """float32 [chunk_size, A] in environment units."""
        images = torch.from_numpy(self.processor.prepare_images(obs.images))[None].to(self.device)
        state = torch.from_numpy(self.processor.normalize_state(obs.state))[None].to(self.device)
        with self.autocast():
            chunk = self.model.predict_action_chunk(images, state, *self._text(subtask))
        return self.processor.unnormalize_actions(chunk[0].float().cpu().numpy())


def load_vla(path: str | Path, device: str = "cpu", dtype: str = "fp32") -> VlaPolicy:
    return VlaPolicy.from_pretrained(path, device=device, dtype=dtype)


class VlaLowLevel:
    """LowLevelPolicy: each call predicts a chunk and hands the loop its first n_action_steps (ACT's and
    LeRobot's receding horizon), so the policy sees a fresh observation every few steps."""

    def __init__(self, policy: VlaPolicy):
        self.policy = policy

    def reset(self) -> None:
        pass

    def act(self, obs: Observation, subtask: str) -> ActionChunk:
        chunk = self.policy.predict_action_chunk(obs, subtask)
        return np.ascontiguousarray(chunk[: self.policy.cfg.n_action_steps])
