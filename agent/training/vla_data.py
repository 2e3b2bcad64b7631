"""Training samples for the low-level VLA, built from recorded sessions.

One sample per kept control step that executes a subtask:
  images    front/wrist frames of that step, resized to the model's image size (uint8)
  state     the robot state at that step
  subtask   the subtask in force (the text the low level was told)
  actions   the next `chunk_size` actions, masked where the episode ends or the subtask changes, so a
            chunk never teaches the next subtask's motion under this subtask's words; in an episode
            whose steps carry expert labels (schema 5, `hivla datagen --mode dagger`) the step's label
            instead (the chunk the expert would execute from that state), and only labelled steps

A `--data` entry `nudges:DIR` (`hivla train --nudge-data DIR`) reads DIR's coached sessions for their
nudge samples only: one sample at each step a nudge's burst moved the arm (agent/coaching/nudge_bursts.py)
of a burst that helped (the subtask in force was then completed), under the subtask in force; its chunk
is what ran from there, the nudge's offsets and then the low level's own actions, masked as above.
`nudges-all:DIR` (`--all-nudges`) keeps every burst, helped or not. Why the steps after the burst stay in
the chunk: the policy executes 7 of its 10 actions, so a chunk cut at the burst's end would leave the
rest of what it executes there unsupervised, at a state where it had gone wrong; and after a burst that
helped, what the low level did next is the motion that finished the subtask from where the person put
the arm. The burst steps are all kept whatever `--stride` says: a few steps each, and the first is the
only one whose chunk starts with the whole nudge. The other steps of those sessions (the low level's own
actions, mistakes included) are not read.

Samples are tokenised/normalised once and cached as one safetensors file beside the checkpoint,
so training reads tensors only and a resumed run skips decoding.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from policies.pi05.processor import NormStats, resize_images
from policies.vla.configuration import VlaConfig
from policies.vla.processor import VlaProcessor, train_subtask_tokenizer

if TYPE_CHECKING:
    from sessions.reader import EpisodeData

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
    nudge: list[bool] = field(default_factory=list)  # a nudge sample (read from a `nudges:` entry)

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


NUDGES, ALL_NUDGES = "nudges:", "nudges-all:"  # a --data entry read for its nudge samples only (see above)


def data_selection(entry: str | Path) -> tuple[str, Path]:
    """What a --data entry asks for: ("steps" | "nudges" | "nudges-all", the path)."""
    text = str(entry)
    for prefix in (ALL_NUDGES, NUDGES):
        if text.startswith(prefix):
            return prefix[:-1], Path(text[len(prefix):])
    return "steps", Path(text)


def collect_vla_samples(data_paths: list[str | Path], cfg: VlaConfig, stride: int = 1, log=print) -> VlaSamples:
    from sessions.reader import iter_sessions

    raw = VlaSamples()
    n_sessions = n_episodes = 0
    entries = [data_selection(p) for p in data_paths]
    for selection in ("steps", "nudges", "nudges-all"):
        paths = [path for sel, path in entries if sel == selection]
        before = len(raw)
        for session in iter_sessions(paths, on_error=lambda p, e: log(f"skipping {p}: {e}")) if paths else ():
            n_sessions += 1
            for ep in session.episodes:
                if not ep.steps:
                    continue
                n_episodes += 1
                if selection == "steps":
                    _add_steps(raw, session.header.session_id, ep, cfg, stride)
                else:
                    _add_nudges(raw, session.header.session_id, ep, cfg, keep_all=selection == "nudges-all")
            log(f"read {session.path.name}{'' if selection == 'steps' else ' (nudges)'}: {len(raw)} samples so far")
        if paths and selection != "steps" and len(raw) == before:
            from agent.errors import UserError

            raise UserError(f"no nudge samples under {' '.join(map(str, paths))}: " + (
                "no nudge there moved the arm; record coached runs with `hivla run --coach scripted --out DIR`"
                if selection == "nudges-all" else "after none of their nudges was the subtask completed; add "
                "--all-nudges to keep every nudge, or record more coached runs"))
    if not len(raw):
        raise ValueError(f"no low-level training samples under {[str(p) for p in data_paths]} "
                         f"({n_sessions} sessions, {n_episodes} episodes read); record some with `hivla datagen`")
    return raw


def _add_steps(raw: VlaSamples, session_id: str, ep: EpisodeData, cfg: VlaConfig, stride: int) -> None:
    """Every `stride`th step that executes a subtask; a labelled (DAgger) episode's labelled steps only."""
    subtasks = [s.subtask for s in ep.steps]
    masks = chunk_masks(subtasks, [s.paused for s in ep.steps], cfg.chunk_size)
    actions = np.asarray([s.action for s in ep.steps], np.float32)
    # DAgger episodes: the policy learns the expert's chunk at each visited state, not what ran next
    labelled = any(s.label is not None for s in ep.steps)
    kept = [i for i in range(0, len(ep.steps), stride) if subtasks[i] and not ep.steps[i].paused
            and (not labelled or ep.steps[i].label is not None)]
    if not kept:
        return
    frames = {cam: resize_images(ep.frames(cam)[kept], cfg.image_size) for cam in cfg.cameras}
    for row, i in enumerate(kept):
        if labelled:  # the expert's whole chunk from this state, under this subtask
            future = np.asarray(ep.steps[i].label, np.float32)[: cfg.chunk_size]
            mask = np.arange(cfg.chunk_size) < len(future)
        else:
            future, mask = actions[i: i + cfg.chunk_size], masks[i]
        _append(raw, session_id, ep, i, [frames[cam][row] for cam in cfg.cameras], future, mask, cfg)


def _add_nudges(raw: VlaSamples, session_id: str, ep: EpisodeData, cfg: VlaConfig, keep_all: bool) -> None:
    """A sample at each step a nudge's burst moved the arm (of bursts that helped, unless `keep_all`)."""
    from agent.coaching.nudge_bursts import nudge_bursts

    kept = sorted({i for b in nudge_bursts(ep) if b.helped or keep_all for i in b.positions if ep.steps[i].subtask})
    if not kept:
        return
    masks = chunk_masks([s.subtask for s in ep.steps], [s.paused for s in ep.steps], cfg.chunk_size)
    actions = np.asarray([s.action for s in ep.steps], np.float32)
    # a few steps of a long episode: read only their frames
    frames = {cam: resize_images(np.stack([ep.frame(cam, i) for i in kept]), cfg.image_size) for cam in cfg.cameras}
    for row, i in enumerate(kept):
        images = [frames[cam][row] for cam in cfg.cameras]
        _append(raw, session_id, ep, i, images, actions[i: i + cfg.chunk_size], masks[i], cfg, nudge=True)


def _append(raw: VlaSamples, session_id: str, ep: EpisodeData, i: int, images: list[np.ndarray], future: np.ndarray,
            mask: np.ndarray, cfg: VlaConfig, nudge: bool = False) -> None:
    chunk = np.zeros((cfg.chunk_size, len(ep.steps[i].action)), np.float32)
    chunk[: len(future)] = future
    raw.images.append(np.stack(images))
    raw.states.append(np.asarray(ep.steps[i].state, np.float32))
    raw.subtasks.append(ep.steps[i].subtask)
    raw.actions.append(chunk)
    raw.action_masks.append(mask)
    raw.episode_keys.append(f"{session_id}/{ep.episode}")
    raw.nudge.append(nudge)


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
    return tensors, {"episodes": keys, "samples": len(raw), "nudge_samples": sum(raw.nudge), "first_words": dict(kinds)}


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
