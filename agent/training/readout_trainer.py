"""Stage 1 of the grounded planner: the object read-out alone, supervised by the simulator object by
object (run by agent/training/loop.py, the one training loop).

    hivla train --model readout --data runs/grounded_frames --out runs/readout --steps 12000

Every planner frame (`hivla datagen --mode planner`) gives one sample: both cameras in; each block
name's place / where / side / x and the drawer's state out (policies.pi05.objects.labels_from_facts).
No text, no backbone: a step runs the convolutions and the queries only, hundreds of frames a second.

OUT receives config.json (the `grounded` preset) and model.safetensors holding the read-out's tensors
under the names a Pi05Model gives them (`vision.*`), so stage 2 (`hivla train --preset grounded
--readout OUT`) loads them as they are; plus the resume state and train.log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from agent.training.loop import Logger, PresetSettings, Recipe, TrainingLoop
from policies.checkpoint import warm_start
from policies.pi05.configuration import Pi05Config, make_config
from policies.pi05.objects import BOWL_NAMES, ObjectReadout, labels_from_facts, object_correct, read_scenes
from policies.scene_line import PLACES, format_scene, scene_from_facts

LABELS = ("place", "where", "side", "x", "bowls", "drawer")
READOUT_FILE = "model.safetensors"


@dataclass(kw_only=True)
class ReadoutSettings(PresetSettings):
    """The object read-out's training. The fields every run has (data, out, device, dtype, resume, seed, ...) are
    PresetSettings' and RecipeSettings' (agent/training/loop.py); the schedule's defaults are this recipe's."""

    presets: ClassVar[tuple[str, ...]] = ("grounded",)  # the preset with the object read-out (vision_stem "objects")
    preset: str = "grounded"
    steps: int = 12000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 300
    threads: int | None = 2
    held_out_fraction: float = 0.05
    eval_frames: int = 1000
    init_from: str | None = None  # a read-out to start from (OUT of an earlier stage 1): its matching tensors


@dataclass
class FrameSet:
    """Planner frames as tensors, with their read-out labels and what a scene line needs (the task)."""

    images: Tensor  # uint8 [N, n_cam, S, S, 3]
    labels: dict[str, Tensor]
    episode: Tensor  # [N] episode index
    tasks: list[str]
    facts: list[dict]
    families: list[str]

    def batch(self, idx: Tensor, device: torch.device) -> dict[str, Tensor]:
        out = {"images": self.images[idx]}
        out.update({k: v[idx] for k, v in self.labels.items()})
        return {k: v.to(device) for k, v in out.items()}


def load_frames(paths: list[str | Path], image_size: int, log=print) -> FrameSet:
    """Every frame of the planner-frame shards under `paths`, with its labels."""
    from agent.training.planner_frames import read_shard, shards
    from policies.pi05.processor import resize_images

    stems = [stem for path in paths for stem in shards(path)]
    if not stems:
        raise ValueError(f"no planner-frame shards under {[str(p) for p in paths]}; "
                         "record some with `hivla datagen --mode planner`")
    images, cols = [], {k: [] for k in LABELS}
    episodes, tasks, facts, families, keys = [], [], [], [], {}
    for stem in stems:
        rows, imgs, _ = read_shard(stem)
        if imgs.shape[2] != image_size:
            imgs = resize_images(imgs.reshape(-1, *imgs.shape[2:]), image_size).reshape(
                len(imgs), imgs.shape[1], image_size, image_size, 3)
        images.append(imgs)
        for row in rows:
            labels = labels_from_facts(row["facts"])
            for k in LABELS:
                cols[k].append(labels[k])
            episodes.append(keys.setdefault(f"{stem.parent.name}/{row['episode']}", len(keys)))
            tasks.append(row["context"]["task"])
            facts.append(row["facts"])
            families.append(row.get("family") or "?")
    labels = {k: torch.tensor(v, dtype=torch.float32 if k == "x" else torch.long) for k, v in cols.items()}
    log(f"read-out frames: {len(tasks)} frames of {len(keys)} episodes in {len(stems)} shards")
    return FrameSet(torch.from_numpy(np.concatenate(images)), labels, torch.tensor(episodes), tasks, facts, families)


class ReadoutObjective(nn.Module):
    """forward(batch) -> (loss, info), the training loop's contract, around the read-out."""

    def __init__(self, cfg: Pi05Config):
        super().__init__()
        self.cfg = cfg
        self.vision = ObjectReadout(cfg)  # named as in Pi05Model, so the saved tensors load into one

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        return self.vision.loss(self.vision.features(batch["images"]), batch)


@torch.no_grad()
def evaluate_readout(readout: ObjectReadout, frames: FrameSet, idx: Tensor, dtype: str, device: torch.device,
                     batch_size: int = 128) -> dict:
    """On the frames `idx`: present objects placed right (place, and where / side where they apply),
    frames whose every block is right, scene lines written exactly right (order and drawer included),
    objects right per true place, and (a read-out that reads bowls) bowls read right, there or not."""
    was_training = readout.training
    readout.eval()
    right_objects = present = lines_right = frames_right = bowls_right = 0
    per_place = {p: [0, 0] for p in PLACES[1:]}
    for chunk in idx.split(batch_size):
        batch = frames.batch(chunk, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = {k: v.float() for k, v in readout.heads(readout.features(batch["images"])).items()}
        ok = object_correct(out, batch)
        if "bowls" in out:
            bowls_right += int((out["bowls"].argmax(-1) == batch["bowls"]).sum())
        is_present = batch["place"] > 0
        right_objects += int((ok & is_present).sum())
        present += int(is_present.sum())
        frames_right += int(ok.all(1).sum())
        for p_idx, place in enumerate(PLACES[1:], start=1):
            mask = batch["place"] == p_idx
            per_place[place][0] += int((ok & mask).sum())
            per_place[place][1] += int(mask.sum())
        tasks = [frames.tasks[i] for i in chunk.tolist()]
        for scene, i in zip(read_scenes(out, tasks), chunk.tolist()):
            true = scene_from_facts(frames.facts[i], frames.tasks[i], bowls=readout.reads_bowls)
            lines_right += format_scene(scene) == format_scene(true)
    readout.train(was_training)
    n = len(idx)
    metrics = {"objects_right": right_objects / max(1, present), "frames_all_blocks_right": frames_right / max(1, n),
               "scene_lines_right": lines_right / max(1, n), "frames": n,
               "per_place": {p: {"right": r / t, "n": t} for p, (r, t) in per_place.items() if t}}
    if readout.reads_bowls:
        metrics["bowls_right"] = bowls_right / max(1, n * len(BOWL_NAMES))
    return metrics


def save_readout(out: Path, readout: ObjectReadout, cfg: Pi05Config, info: dict) -> None:
    from safetensors.torch import save_file

    cfg.save(out / "config.json")
    tensors = {f"vision.{k}": v.detach().contiguous() for k, v in readout.state_dict().items()}
    tmp = out / f".{READOUT_FILE}.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(out / READOUT_FILE)
    (out / "checkpoint_info.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")


def load_readout_into(model: nn.Module, path: str | Path) -> None:
    """Copy a stage-1 read-out (its OUT directory) into `model.vision`; a one-line error names the fix."""
    from safetensors.torch import load_file

    from policies.checkpoint import check_safetensors_file

    weights = Path(path) / READOUT_FILE
    if not weights.is_file():
        raise ValueError(f"{path}: no {READOUT_FILE}; train one with `hivla train --model readout --out {path}`")
    check_safetensors_file(weights)
    saved = {k.removeprefix("vision."): v for k, v in load_file(str(weights)).items() if k.startswith("vision.")}
    missing, unexpected = model.vision.load_state_dict(saved, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: not an object read-out of this config (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}); train it with the same --preset")


def train_readout(s: ReadoutSettings) -> dict:
    from agent.training.dataset import split_episodes

    loop = TrainingLoop(s.loop_settings(betas=(0.9, 0.95), log_every=100, label="read-out"))
    log: Logger = loop.log
    out, device = loop.out, loop.device
    torch.manual_seed(s.seed)
    cfg = (Pi05Config.load(out / "config.json") if loop.resuming and (out / "config.json").is_file()
           else make_config(s.preset, **s.overrides))
    if cfg.vision_stem != "objects":
        raise ValueError(f"--preset {s.preset} has vision_stem {cfg.vision_stem!r}; the read-out recipe needs 'objects'")
    frames = load_frames(s.data, cfg.image_size, log.echo)
    train_idx, held_idx = split_episodes(frames.episode, s.held_out_fraction, s.seed)
    model = ReadoutObjective(cfg).to(device)
    if loop.resuming:
        load_readout_into(model, out)
    elif s.init_from:
        fresh = warm_start(model, Path(s.init_from) / READOUT_FILE)
        log.echo(f"initialised from {s.init_from}; {len(fresh)} tensors start fresh: {', '.join(fresh) or 'none'}")
    g = torch.Generator().manual_seed(s.seed)
    eval_idx = held_idx[torch.randperm(len(held_idx), generator=g)[: s.eval_frames]]
    log.echo(f"read-out: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
             f"{len(train_idx)} train / {len(held_idx)} held-out frames; {s.dtype} on {device}")

    def batches(step: int) -> Iterator[dict]:
        return (frames.batch(idx, device) for idx in loop.shuffled(train_idx, s.seed, step))

    def save(state: dict) -> None:
        save_readout(out, model.vision, cfg, {"stage": "readout", "step": state["step"], "samples": state["samples"],
                                              "train_time_s": state["elapsed_s"], "data": s.data,
                                              "last_eval": state["history"][-1] if state["history"] else None})

    def evaluate(step: int, final: bool) -> dict:
        metrics = evaluate_readout(model.vision, frames, eval_idx, s.dtype, device)
        metrics.pop("per_place")
        return metrics

    loop.run(Recipe(model=model, batches=batches, save=save, evaluate=evaluate))
    summary = loop.summary()
    log.echo(f"done: {json.dumps(summary)}")
    return summary
