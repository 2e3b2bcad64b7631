"""Stage 1 of the grounded planner: the object read-out alone, supervised by the simulator object by
object (run by agent/training/loop.py, the one training loop).

    hivla train --model readout --data runs/grounded_frames --out runs/readout --steps 12000

Every planner frame (`hivla datagen --mode planner`) gives one sample: both cameras in; each block
name's place / where / side / x and the drawer's state out (policies.pi05.objects.labels_from_facts).
No text, no backbone: a step runs the convolutions and the queries only, hundreds of frames a second.

With `--set readout_belief=true` the read-out also learns to carry a belief: each frame is read with
its episode's frame before (that frame's truth, or BELIEF_READ of the time the starting read-out's
reading of it; none on BELIEF_UNKNOWN of the frames and on every episode's first), and is scored reading
each held-out episode in order (read_in_order), as on a robot. `--init-from` a grounded checkpoint then
starts from its read-out and its configuration.

OUT receives config.json (the `grounded` preset) and model.safetensors holding the read-out's tensors
under the names a Pi05Model gives them (`vision.*`), so stage 2 (`hivla train --preset grounded
--readout OUT`) loads them as they are; plus the resume state and train.log.
"""

from __future__ import annotations

import dataclasses
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
from policies.pi05.objects import (BOWL_NAMES, Belief, ObjectReadout, belief_from_labels,
                                   belief_where, labels_from_facts, object_correct, read_scenes, select_belief,
                                   unknown_belief)
from policies.scene_line import PLACES, format_scene, scene_from_facts

LABELS = ("place", "where", "side", "x", "bowls", "drawer")
# a read-out with a belief (Pi05Config.readout_belief) trains without one on this share of frames (besides every
# episode's first), and of the rest, with what the read-out it starts from read on the frame before on this
# share (the mistakes it will carry on a robot), else with that frame's truth
BELIEF_UNKNOWN = 0.15
BELIEF_READ = 0.5
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
    belief_unknown: float = BELIEF_UNKNOWN  # (a read-out with `readout_belief`: see BELIEF_UNKNOWN)
    belief_read: float = BELIEF_READ


@dataclass
class FrameSet:
    """Planner frames as tensors, with their read-out labels and what a scene line needs (the task)."""

    images: Tensor  # uint8 [N, n_cam, S, S, 3]
    labels: dict[str, Tensor]
    episode: Tensor  # [N] episode index
    tasks: list[str]
    facts: list[dict]
    families: list[str]
    previous: Tensor | None = None  # [N] the episode's frame before this one (-1: its first)

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
    return FrameSet(torch.from_numpy(np.concatenate(images)), labels, torch.tensor(episodes), tasks, facts, families,
                     previous_in_episode(episodes))


def previous_in_episode(episodes: list[int]) -> Tensor:
    """Per frame, its episode's frame before it (-1: the episode's first), for frames listed in order within
    each episode (a shard keeps an episode's plans in order)."""
    previous, last = [], {}
    for i, episode in enumerate(episodes):
        previous.append(last.get(episode, -1))
        last[episode] = i
    return torch.tensor(previous, dtype=torch.long)


class ReadoutObjective(nn.Module):
    """forward(batch) -> (loss, info), the training loop's contract, around the read-out."""

    def __init__(self, cfg: Pi05Config):
        super().__init__()
        self.cfg = cfg
        self.vision = ObjectReadout(cfg)  # named as in Pi05Model, so the saved tensors load into one

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        belief = {k.removeprefix("belief_"): v for k, v in batch.items() if k.startswith("belief_")} or None
        return self.vision.loss(self.vision.features(batch["images"], belief), batch)


def read_in_order(readout: ObjectReadout, images: Tensor, previous: Tensor, dtype: str, device: torch.device,
                  batch_size: int = 128) -> dict[str, Tensor]:
    """The heads on every frame, each reading with the belief the read-out itself formed on its episode's
    frame before (`previous`: an index into these frames, -1 for an episode's first), as it runs on a robot.
    A read-out without a belief reads each frame alone."""
    return read_episodes(readout, images, previous, dtype, device, batch_size)[0]


def read_episodes(readout: ObjectReadout, images: Tensor, previous: Tensor, dtype: str, device: torch.device,
                  batch_size: int = 128) -> tuple[dict[str, Tensor], Belief | None]:
    """read_in_order's heads, and the belief each frame leaves for its episode's next one
    (ObjectReadout.belief_after; None for a read-out without a belief): all first frames, then all second
    frames, and so on."""
    depth = torch.zeros(len(previous), dtype=torch.long)
    for i, p in enumerate(previous.tolist()):
        if p >= 0:
            depth[i] = depth[p] + 1  # an episode's frames come in order
    out: dict[str, Tensor] = {}
    left: Belief | None = None
    was_training = readout.training
    readout.eval()
    with torch.no_grad():
        for d in range(int(depth.max()) + 1 if len(depth) else 0):
            rows = (depth == d).nonzero().squeeze(1)
            for chunk in rows.split(batch_size):
                belief = None
                if readout.reads_belief and d > 0:
                    belief = {k: v.to(device) for k, v in beliefs_before(left, previous[chunk]).items()}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                    heads = readout.heads(readout.features(images[chunk].to(device), belief))
                heads = {k: v.float() for k, v in heads.items()}
                for k, v in heads.items():
                    if k not in out:
                        out[k] = torch.zeros(len(previous), *v.shape[1:])
                    out[k][chunk] = v.cpu()
                if readout.reads_belief:
                    after = readout.belief_after(heads, belief)
                    if left is None:
                        left = {k: torch.zeros(len(previous), *v.shape[1:], dtype=v.dtype) for k, v in after.items()}
                    for k, v in after.items():
                        left[k][chunk] = v.cpu()
    readout.train(was_training)
    return out, left


def beliefs_before(left: Belief, previous: Tensor) -> Belief:
    """The belief each frame is read with: the one its episode's frame before left (`previous`, rows of
    `left`, read_episodes), nothing where there is none (-1)."""
    return belief_where(previous < 0, unknown_belief(len(previous)), select_belief(left, previous.clamp(min=0)))


def heads_if_believing(readout: ObjectReadout, frames: "FrameSet", idx: Tensor, dtype: str,
                       device: torch.device) -> dict[str, Tensor] | None:
    """For a read-out that carries a belief, its heads read through every episode `idx` touches, in order
    (heads_in_order); None for one that reads each frame alone."""
    if not readout.reads_belief or frames.previous is None:
        return None
    episodes = frames.episode[idx].unique()
    return heads_in_order(readout, frames, torch.isin(frames.episode, episodes).nonzero().squeeze(1), dtype, device)


def heads_in_order(readout: ObjectReadout, frames: "FrameSet", rows: Tensor, dtype: str,
                   device: torch.device) -> dict[str, Tensor]:
    """read_in_order on the frames `rows` (whole episodes), as tensors over every frame of `frames`
    (zeros on the others), to index as frames are."""
    rows = rows.sort().values
    local = torch.full((len(frames.tasks),), -1, dtype=torch.long)
    local[rows] = torch.arange(len(rows))
    prev = frames.previous[rows]
    heads = read_in_order(readout, frames.images[rows], torch.where(prev >= 0, local[prev.clamp(min=0)], -1),
                          dtype, device)
    full = {}
    for k, v in heads.items():
        full[k] = torch.zeros(len(frames.tasks), *v.shape[1:])
        full[k][rows] = v
    return full


def beliefs_for(frames: "FrameSet", idx: Tensor, read: Belief | None, unknown: float, from_read: float,
                generator: torch.Generator) -> Belief:
    """The belief each frame of `idx` trains with: from its episode's frame before, the truth there or (a
    `from_read` share) `read`'s belief there; nothing for an episode's first frame and an `unknown` share."""
    prev = frames.previous[idx]
    n = len(idx)
    belief = belief_from_labels({k: frames.labels[k][prev.clamp(min=0)] for k in ("place", "where", "side", "x",
                                                                                  "drawer")})
    if read is not None:
        belief = belief_where(torch.rand(n, generator=generator) < from_read, select_belief(read, prev.clamp(min=0)),
                              belief)
    none = (prev < 0) | (torch.rand(n, generator=generator) < unknown)
    return belief_where(none, unknown_belief(n), belief)


@torch.no_grad()
def evaluate_readout(readout: ObjectReadout, frames: FrameSet, idx: Tensor, dtype: str, device: torch.device,
                     batch_size: int = 128, heads: dict[str, Tensor] | None = None) -> dict:
    """On the frames `idx`: present objects placed right (place, and where / side where they apply),
    frames whose every block is right, scene lines written exactly right (order and drawer included),
    objects right per true place, and (a read-out that reads bowls) bowls read right, there or not.
    `heads`: the read-out's heads on every frame of `frames` already; without them a read-out with a belief
    is scored on what it reads carrying its own belief through each episode (heads_if_believing)."""
    if heads is None:
        heads = heads_if_believing(readout, frames, idx, dtype, device)
    was_training = readout.training
    readout.eval()
    right_objects = present = lines_right = frames_right = bowls_right = 0
    per_place = {p: [0, 0] for p in PLACES[1:]}
    for chunk in idx.split(batch_size):
        batch = frames.batch(chunk, device)
        if heads is not None:
            out = {k: v[chunk].to(device) for k, v in heads.items()}
        else:
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


def load_readout(path: str | Path) -> ObjectReadout:
    """The object read-out alone, from a grounded planner's checkpoint or a stage-1 OUT (both keep its
    tensors as `vision.*` beside config.json), in eval mode."""
    cfg = Pi05Config.load(Path(path) / "config.json")
    model = ReadoutObjective(cfg)
    load_readout_into(model, path)
    return model.vision.eval()


def train_readout(s: ReadoutSettings) -> dict:
    from agent.training.dataset import split_episodes

    loop = TrainingLoop(s.loop_settings(betas=(0.9, 0.95), log_every=100, label="read-out"))
    log: Logger = loop.log
    out, device = loop.out, loop.device
    torch.manual_seed(s.seed)
    init_config = Path(s.init_from or "") / "config.json"
    if loop.resuming and (out / "config.json").is_file():
        cfg = Pi05Config.load(out / "config.json")
    elif s.init_from and init_config.is_file():  # the read-out it starts from, as it was configured, + --set
        cfg = dataclasses.replace(Pi05Config.load(init_config), **s.overrides)
    else:
        cfg = make_config(s.preset, **s.overrides)
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

    read = None
    if cfg.readout_belief:
        read = read_episodes(model.vision, frames.images, frames.previous, s.dtype, device)[1]
        log.echo(f"belief: none on {s.belief_unknown:.0%} of frames and every episode's first; else the frame "
                 f"before's truth or ({s.belief_read:.0%}) this read-out's reading of it at the start")

    def batches(step: int) -> Iterator[dict]:
        g_belief = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
        for idx in loop.shuffled(train_idx, s.seed, step):
            batch = frames.batch(idx, device)
            if cfg.readout_belief:
                belief = beliefs_for(frames, idx, read, s.belief_unknown, s.belief_read, g_belief)
                batch.update({f"belief_{k}": v.to(device) for k, v in belief.items()})
            yield batch

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
