"""Training samples for the low-level VLA, built from recorded sessions.

One sample per kept control step that executes a subtask:
  images    front/wrist frames of that step, resized to the model's image size (uint8)
  state     the robot state at that step
  subtask   the subtask in force (the text the low level was told)
  actions   the next `chunk_size` actions, masked where the episode ends or the subtask changes, so a
            chunk never teaches the next subtask's motion under this subtask's words; in an episode
            whose steps carry expert labels (schema 5, `hivla datagen --mode dagger`) the step's label
            instead (the chunk the expert would execute from that state), and only labelled steps

Samples are tokenised/normalised once and cached as one safetensors file beside the checkpoint,
so training reads tensors only and a resumed run skips decoding.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from policies.pi05.processor import NormStats, resize_images
from policies.vla.configuration import VlaConfig
from policies.vla.processor import VlaProcessor, train_subtask_tokenizer

CACHE_FILE = "vla_cache.safetensors"
CACHE_META = "vla_cache.json"


@dataclass
class VlaSamples:
    images: list[np.ndarray] = field(default_factory=list)  # uint8 [n_cam, S, S, 3]
    states: list[np.ndarray] = field(default_factory=list)  # float32 [D]
    subtasks: list[str] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)  # float32 [H, A]
    action_masks: list[np.ndarray] = field(default_factory=list)  # bool [H]
    episode_keys: list[str] = field(default_factory=list)  # "session/episode", for the held-out split

    def __len__(self) -> int:
        return len(self.states)


def chunk_masks(subtasks: list[str | None], paused: list[bool], horizon: int) -> np.ndarray:
    """bool [T, horizon]: action i + k belongs to sample i when it exists, is not paused and runs under
    the same subtask text as step i."""
    t = len(subtasks)
    out = np.zeros((t, horizon), bool)
    for i in range(t):
        for k in range(horizon):
            j = i + k
            if j >= t or paused[j] or subtasks[j] != subtasks[i]:
                break
            out[i, k] = True
    return out


def collect_vla_samples(data_paths: list[str | Path], cfg: VlaConfig, stride: int = 1, log=print) -> VlaSamples:
    from sessions.reader import iter_sessions

    raw = VlaSamples()
    n_sessions = n_episodes = 0
    for session in iter_sessions(data_paths, on_error=lambda p, e: log(f"skipping {p}: {e}")):
        n_sessions += 1
        for ep in session.episodes:
            if not ep.steps:
                continue
            n_episodes += 1
            subtasks = [s.subtask for s in ep.steps]
            masks = chunk_masks(subtasks, [s.paused for s in ep.steps], cfg.chunk_size)
            actions = np.asarray([s.action for s in ep.steps], np.float32)
            # DAgger episodes: the policy learns the expert's chunk at each visited state, not what ran next
            labelled = any(s.label is not None for s in ep.steps)
            kept = [i for i in range(0, len(ep.steps), stride) if subtasks[i] and not ep.steps[i].paused
                    and (not labelled or ep.steps[i].label is not None)]
            if not kept:
                continue
            frames = {cam: resize_images(ep.frames(cam)[kept], cfg.image_size) for cam in cfg.cameras}
            for row, i in enumerate(kept):
                if labelled:  # the expert's whole chunk from this state, under this subtask
                    future = np.asarray(ep.steps[i].label, np.float32)[: cfg.chunk_size]
                    mask = np.arange(cfg.chunk_size) < len(future)
                else:
                    future, mask = actions[i: i + cfg.chunk_size], masks[i]
                chunk = np.zeros((cfg.chunk_size, actions.shape[1]), np.float32)
                chunk[: len(future)] = future
                raw.images.append(np.stack([frames[cam][row] for cam in cfg.cameras]))
                raw.states.append(np.asarray(ep.steps[i].state, np.float32))
                raw.subtasks.append(subtasks[i])
                raw.actions.append(chunk)
                raw.action_masks.append(mask)
                raw.episode_keys.append(f"{session.header.session_id}/{ep.episode}")
        log(f"read {session.path.name}: {len(raw)} samples so far")
    if not len(raw):
        raise ValueError(f"no low-level training samples under {[str(p) for p in data_paths]} "
                         f"({n_sessions} sessions, {n_episodes} episodes read); record some with `hivla datagen`")
    return raw


def build_processor(raw: VlaSamples, cfg: VlaConfig, vocab_size: int) -> VlaProcessor:
    tokenizer = train_subtask_tokenizer(sorted(set(raw.subtasks)), vocab_size=vocab_size)
    cfg.vocab_size = tokenizer.get_vocab_size()
    valid = np.concatenate([a[m] for a, m in zip(raw.actions, raw.action_masks)])
    return VlaProcessor(cfg, tokenizer, NormStats.from_data(np.stack(raw.states), valid))


def encode_vla_samples(raw: VlaSamples, processor: VlaProcessor) -> tuple[dict[str, torch.Tensor], dict]:
    ids, masks = zip(*(processor.subtask_ids(s) for s in raw.subtasks))
    keys = sorted(set(raw.episode_keys))
    episode_index = {k: i for i, k in enumerate(keys)}
    tensors = {
        "images": torch.from_numpy(np.stack(raw.images)),
        "state": torch.from_numpy(np.stack([processor.normalize_state(s) for s in raw.states])),
        "subtask_ids": torch.from_numpy(np.stack(ids)),
        "subtask_mask": torch.from_numpy(np.stack(masks)),
        "actions": torch.from_numpy(np.stack([processor.normalize_actions(a) for a in raw.actions])),
        "action_mask": torch.from_numpy(np.stack(raw.action_masks)),
        "episode": torch.tensor([episode_index[k] for k in raw.episode_keys], dtype=torch.long),
    }
    kinds = Counter(s.split(" ")[0] for s in raw.subtasks)
    return tensors, {"episodes": keys, "samples": len(raw), "first_words": dict(kinds)}


def save_cache(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save_file

    tmp = path / f".{CACHE_FILE}.tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path / CACHE_FILE)
    (path / CACHE_META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def load_cache(path: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    from safetensors.torch import load_file

    if not (path / CACHE_FILE).is_file() or not (path / CACHE_META).is_file():
        return None
    return load_file(str(path / CACHE_FILE)), json.loads((path / CACHE_META).read_text(encoding="utf-8"))
