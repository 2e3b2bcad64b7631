"""The data of `hivla finetune` (pi05): the coaching corrections and the base data each batch mixes.

Corrections: the relabelled frames around each correction (agent/training/corrections.py), one
agreement sample per correction, split by episode into training and held-out; read from the
exports' coaching tables alone (labels computed at export: sessions/export/coaching.py). Base data: the
sessions the base checkpoint was trained on, planner-frame directories (`hivla datagen --mode planner`,
read as `hivla train` reads them: the thought its config writes, its context, scene questions), or a
cached tensor dataset (the base checkpoint's data_cache, or base_cache.safetensors that an earlier
fine-tune wrote), at most max_base_samples.

A grounded planner (vision_stem "objects": its frozen read-out writes "I see: <scene line>", the
backbone decides "So: <subtask>") learns a correction as "<scene line> So: <subtask>", the line being
the one it writes itself at that frame: its frozen read-out's reading of the frame, with the facts in
force then (what a person or the coach said is true, recorded in the plans' contexts) in place of its
reading of those objects, which is the line the planner forces at inference (policies/pi05/policy.py
decode_grounded). The sessions record no simulator facts, so no truer line is there to be had; a
misreading is kept, as the planner will decide from it. Its base data must be planner frames, whose
line is written from the simulator's facts, as `hivla train --preset grounded` wrote it.

Memory: planner frames are read one directory at a time, each cut to its share of max_base_samples
before the next is read (34k frames of two 64 px cameras are 0.8 GB as read, twice that while
encoded); frames are stored once, shared by the samples made on them (`frame`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agent.training.corrections import (
    CorrectionDataError,
    agreement_samples,
    coaching_data_kind,
    correction_samples,
    is_held_out,
    load_coached_episodes,
)
from agent.training.dataset import CACHE_FILE, RawSamples, collect_samples, encode_samples, load_cache
from agent.training.finetune_settings import FinetuneSettings
from agent.training.planner_frames import is_planner_frames, shards
from agent.training.trainer import TrainSettings, thought_kind
from policies.pi05.configuration import Pi05Config
from policies.pi05.processor import Pi05Processor

BASE_CACHE_FILE = "base_cache.safetensors"
FRAME_KEYS = ("images", "object_features")  # stored once a frame when a dataset has a `frame` column
DATAGEN_PLANNER = "`hivla datagen --mode planner`"


def _tokenizer_digest(processor: Pi05Processor) -> str:
    return hashlib.sha256(processor.tok.to_str().encode()).hexdigest()[:16]


def is_grounded(cfg: Pi05Config) -> bool:
    """A planner whose frozen object read-out writes the scene line it decides from (`grounded` preset)."""
    return cfg.vision_stem == "objects"


# ---------------------------------------------------------------------------------------------
# tensor datasets whose frames may be shared (`frame`: each sample's row of `images`)
# ---------------------------------------------------------------------------------------------


def frame_index(tensors: dict) -> torch.Tensor:
    """Each sample's row of the frame tensors (`images`, `object_features`)."""
    return tensors["frame"] if "frame" in tensors else torch.arange(len(tensors["prefix_ids"]))


def take_samples(tensors: dict, idx: torch.Tensor) -> dict:
    """The samples `idx` of a tensor dataset, with only the frames they use (re-indexed)."""
    idx = torch.as_tensor(idx, dtype=torch.long)
    frames = frame_index(tensors)[idx]
    used, remap = torch.unique(frames, return_inverse=True)
    out = {k: v[used] if k in FRAME_KEYS else v[idx] for k, v in tensors.items() if k != "frame"}
    out["frame"] = remap
    return out


def concat_samples(parts: list[dict]) -> dict:
    """Datasets one after the other (their frames too). Their class columns (subtask_class, ...)
    index each part's own lists: after this only their sign says a plan from a question."""
    frames, offset = [], 0
    for part in parts:
        frames.append(frame_index(part) + offset)
        offset += len(part["images"])
    keys = [k for k in parts[0] if k != "frame"]
    missing = [k for part in parts for k in keys if k not in part]
    if missing:
        raise ValueError(f"datasets to concatenate lack {sorted(set(missing))}")
    out = {k: torch.cat([part[k] for part in parts]) for k in keys}
    out["frame"] = torch.cat(frames)
    return out


def _subset(tensors: dict, n: int, seed: int) -> dict:
    total = len(tensors["prefix_ids"])
    if total <= n:
        return tensors
    keep = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return take_samples(tensors, keep)


def plan_samples(tensors: dict) -> torch.Tensor:
    """Indices of the samples that are plans (not scene questions)."""
    n = len(tensors["prefix_ids"])
    if "subtask_class" not in tensors:
        return torch.arange(n)
    return torch.nonzero(tensors["subtask_class"] >= 0).flatten()


# ---------------------------------------------------------------------------------------------
# base data
# ---------------------------------------------------------------------------------------------


def base_scene_questions(s: FinetuneSettings, cfg: Pi05Config) -> float:
    """Scene questions a base planner frame gets, on average: `s.base_scene_questions`, else what
    `hivla train` asks by default for a model co-trained on them (none for one that is not)."""
    if s.base_scene_questions is not None:
        return s.base_scene_questions
    return TrainSettings.scene_questions if cfg.scene_questions else 0.0


def _frames_in(path: str | Path) -> int:
    """Frames in a planner-frames directory (a shard's jsonl holds one row a frame)."""
    return sum(sum(1 for line in Path(f"{stem}.jsonl").read_bytes().splitlines() if line.strip())
               for stem in shards(path))


def _check_cache_fits(where: Path, meta: dict, cfg: Pi05Config, base: Path) -> None:
    """A cached base dataset must hold the contexts and thoughts this checkpoint reads and writes."""
    context_last = meta.get("context_last", "in_force")
    if context_last != cfg.context_last:
        raise CorrectionDataError(f"{where} holds context_last={context_last!r} contexts but {base} reads "
                                  f"{cfg.context_last!r}; pass the base data directories instead")
    if is_grounded(cfg) and meta.get("thoughts") != thought_kind(cfg):
        raise CorrectionDataError(
            f"{where} holds {meta.get('thoughts') or 'unknown'} thoughts, not the scene lines ({thought_kind(cfg)}) "
            f"{base} writes; pass its planner-frame directories ({DATAGEN_PLANNER}) instead")


def base_dataset(s: FinetuneSettings, processor: Pi05Processor, log) -> tuple[dict, int]:
    """Base training tensors (at most max_base_samples) and the size of the base dataset they come
    from, in samples. Sources, in order: --base-data (session or planner-frame dirs, or dirs holding a
    cache), the base checkpoint's own data cache, the data paths its checkpoint_info.json names."""
    base = Path(s.base)
    cfg = processor.cfg
    sources = list(s.base_data or [])
    if not sources:
        if (base / CACHE_FILE).is_file():
            sources = [str(base)]
        else:
            info = base / "checkpoint_info.json"
            sources = json.loads(info.read_text()).get("data", []) if info.is_file() else []
            missing = [p for p in sources if not Path(p).exists()]
            if missing:
                raise CorrectionDataError(f"{base} was trained on {', '.join(missing)}, which is not here; pass "
                                          f"--base-data (the data it was trained on)")
    if not sources:
        raise CorrectionDataError(f"no base data: pass --base-data (the `hivla datagen` sessions the base "
                                  f"checkpoint was trained on); {base} has no data cache or data record")
    cached = [Path(p) for p in sources if (Path(p) / BASE_CACHE_FILE).is_file() or (Path(p) / CACHE_FILE).is_file()]
    if cached:
        if len(sources) > 1:
            raise CorrectionDataError("--base-data: give one cached dataset directory, or session directories")
        d = cached[0]
        if (d / BASE_CACHE_FILE).is_file():
            from safetensors.torch import load_file

            meta = json.loads((d / (BASE_CACHE_FILE + ".json")).read_text())
            if meta.get("tokenizer") != _tokenizer_digest(processor):
                raise CorrectionDataError(f"{d / BASE_CACHE_FILE} was encoded with another tokenizer than {base}'s")
            _check_cache_fits(d / BASE_CACHE_FILE, {"context_last": cfg.context_last, **meta}, cfg, base)
            tensors, total = load_file(str(d / BASE_CACHE_FILE)), int(meta["base_samples_total"])
        else:
            if d.resolve() != base.resolve():
                if not (d / "tokenizer.json").is_file() or \
                        (d / "tokenizer.json").read_bytes() != (base / "tokenizer.json").read_bytes():
                    raise CorrectionDataError(f"{d / CACHE_FILE} was not encoded with {base}'s tokenizer "
                                              f"(no identical {d / 'tokenizer.json'}); pass the base sessions instead")
            tensors, meta = load_cache(d)
            # `hivla train` wrote it with the thoughts of the config beside it (trainer.thought_kind)
            if (d / "config.json").is_file():
                meta = {**meta, "thoughts": thought_kind(Pi05Config.load(d / "config.json"))}
            _check_cache_fits(d / CACHE_FILE, meta, cfg, base)
            total = len(tensors["prefix_ids"])
        log(f"base data: {total} samples in {d}")
        return _subset(tensors, s.max_base_samples, s.seed), total
    frames = [is_planner_frames(p) for p in sources]
    if is_grounded(cfg) and not all(frames):
        raise CorrectionDataError(
            f"{base} is a grounded planner: its base data are planner frames ({DATAGEN_PLANNER}), whose scene lines "
            f"are written from the simulator's facts; {', '.join(p for p, f in zip(sources, frames) if not f)} "
            f"holds none")
    if all(frames):
        tensors, total, note = _planner_frame_base(s, sources, processor, log)
        meta = {"thoughts": thought_kind(cfg), "scene_questions": base_scene_questions(s, cfg)}
    else:
        raw = collect_samples(sources, cfg.cameras, cfg.image_size, cfg.action_horizon, s.base_stride, log,
                              context_last=cfg.context_last)
        total = len(raw) * s.base_stride  # the base dataset at stride 1 (what the base checkpoint saw)
        note = f"{len(raw)} samples (stride {s.base_stride}) of ~{total}"
        tensors, _ = encode_samples(raw, processor)
        del raw
        tensors = _subset(tensors, s.max_base_samples, s.seed)
        meta = {}
    from safetensors.torch import save_file

    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / BASE_CACHE_FILE))
    (out / (BASE_CACHE_FILE + ".json")).write_text(json.dumps(
        {"sources": sources, "stride": s.base_stride, "base_samples_total": total,
         "tokenizer": _tokenizer_digest(processor), "context_last": cfg.context_last, **meta}, indent=1) + "\n")
    log(f"base data: {note} from {sources}; {len(tensors['prefix_ids'])} kept, cached in {out}")
    return tensors, total


def _planner_frame_base(s: FinetuneSettings, sources: list[str], processor: Pi05Processor,
                        log) -> tuple[dict, int, str]:
    """Planner frames as `hivla train` reads them (the thought the config writes: for a grounded
    planner the scene line of the simulator's facts; its context; scene questions), one directory at a
    time, each cut to its share (by frames) of max_base_samples before the next is read."""
    cfg = processor.cfg
    counts = [_frames_in(p) for p in sources]
    questions = base_scene_questions(s, cfg)
    parts, total = [], 0
    for k, (path, n_frames) in enumerate(zip(sources, counts)):
        raw = collect_samples([path], cfg.cameras, cfg.image_size, cfg.action_horizon, 1, log,
                              context_last=cfg.context_last, scene_questions=questions, thoughts=thought_kind(cfg))
        total += len(raw)
        tensors, _ = encode_samples(raw, processor)
        del raw
        share = max(1, round(s.max_base_samples * n_frames / max(1, sum(counts))))
        parts.append(_subset(tensors, share, s.seed + k))
        del tensors
    tensors = parts[0] if len(parts) == 1 else concat_samples(parts)
    n_plans = len(plan_samples(tensors))
    return tensors, total, (f"{total} planner-frame samples ({thought_kind(cfg)} thoughts, {questions:g} scene "
                            f"questions a frame) of {sum(counts)} frames; {n_plans} plans and "
                            f"{len(tensors['prefix_ids']) - n_plans} questions")


@dataclass
class CorrectionData:
    train: dict  # tensors of the relabelled windows of the training corrections
    agree_train: dict  # one sample per training correction
    agree_held: dict  # one sample per held-out correction
    train_labels: list
    held_labels: list
    stats: dict


def correction_dataset(s: FinetuneSettings, processor: Pi05Processor, log, readout=None) -> CorrectionData:
    """The coaching samples. `readout`: a grounded planner's frozen object read-out (its `vision`),
    which writes each sample's scene line (see the module doc); required for a grounded checkpoint."""
    cfg = processor.cfg
    if is_grounded(cfg) and readout is None:
        raise ValueError("a grounded planner's coaching samples need its read-out to write their scene lines")
    coached = load_coached_episodes(s.data, log)
    if not any(c.labels for c in coached):
        raise CorrectionDataError(f"no usable corrections (override/negation/constraint naming a subtask) in {s.data}")
    held = [c for c in coached if is_held_out(c.key, s.held_out_fraction)]
    train = [c for c in coached if not is_held_out(c.key, s.held_out_fraction)]
    if not any(c.labels for c in train):  # every correction fell in the held-out split: hold none out
        train, held = coached, []
    lines = SceneLines(coached, s.data, readout, log) if readout is not None else None
    raw, owner = correction_samples(train, cfg.cameras, cfg.image_size, cfg.action_horizon, s.window_before,
                                    s.window_after, include_approved=s.approved_plans,
                                    with_corrections=s.with_corrections, context_last=cfg.context_last)
    agree_train_raw, train_labels = agreement_samples(train, cfg.cameras, cfg.image_size, cfg.action_horizon,
                                                         cfg.context_last)
    held_labels, agree_held_raw = [], None
    if held:
        agree_held_raw, held_labels = agreement_samples(held, cfg.cameras, cfg.image_size, cfg.action_horizon,
                                                            cfg.context_last)
    written = lines.write(raw) if lines is not None else None
    if lines is not None:
        for part in (agree_train_raw, agree_held_raw):
            if part is not None:
                lines.write(part)
    tensors, _ = encode_samples(raw, processor)
    agree_train, _ = encode_samples(agree_train_raw, processor)
    agree_held = encode_samples(agree_held_raw, processor)[0] if agree_held_raw is not None else {}
    by_family: dict[str, int] = {}
    for lab in train_labels + held_labels:
        by_family[lab.family or "?"] = by_family.get(lab.family or "?", 0) + 1
    approved = sum(1 for o in owner if o < 0)
    stats = {"episodes": len(coached), "train_episodes": len(train), "held_out_episodes": len(held),
             "corrections": len(train_labels) + len(held_labels), "train_corrections": len(train_labels),
             "held_out_corrections": len(held_labels), "correction_samples": len(raw),
             "approved_plan_samples": approved, "by_family": by_family}
    if written is not None:
        stats["scene_lines"] = {**written, "episodes_with_facts": len(lines.facts)}
    log(f"corrections: {stats['corrections']} from {len(coached)} episodes ({len(held_labels)} held out); "
        f"{len(raw)} training samples ({len(raw) - approved} around corrections, {approved} approved plans); "
        f"by family {by_family}")
    if lines is not None:
        st = stats["scene_lines"]
        log(f"scene lines: each coaching sample's read by the frozen read-out at its frame, {st['with_facts']} of "
            f"{len(raw)} with facts said in force; {st['outside_line']} name a subtask their line does not list "
            f"(a misreading: the planner cannot decide them from that line)")
    return CorrectionData(tensors, agree_train, agree_held, train_labels, held_labels, stats)


# ---------------------------------------------------------------------------------------------
# a grounded planner's scene lines
# ---------------------------------------------------------------------------------------------


class SceneLines:
    """Writes the thought of a grounded planner's coaching samples: the scene line it writes itself at
    the sample's frame (its frozen read-out's reading, with the facts in force then applied, as
    Pi05Policy.generate_plan does).

    corrections.py takes each sample's thought from its row of the coaching table (a progress phrase,
    for the other planners); here every row's thought is first set to its own position in its episode,
    so the samples it builds say which step they are of, and `write` then replaces each by the line."""

    def __init__(self, coached: list, data: list[str], readout, log) -> None:
        self.readout = readout
        self.episodes = {c.key: c.episode for c in coached}
        for ep in self.episodes.values():
            for i, row in enumerate(ep.rows):
                row["thought"] = str(i)
        self.facts = recorded_facts(data, log)

    def facts_at(self, key: str, step: int) -> tuple:
        """The facts in force when the last plan at or before `step` was made (as it read them)."""
        said: tuple = ()
        for at, facts in self.facts.get(key, ()):
            if at > step:
                break
            said = facts
        return said

    def write(self, raw: RawSamples) -> dict:
        """Each sample's thought := its scene line. Returns how many were written with facts in force and
        how many name a subtask their line does not list (the planner's grammar cannot decide those)."""
        from policies.plan_grammar import plan_is_allowed
        from policies.planning import format_plan

        if not len(raw):
            return {"with_facts": 0, "outside_line": 0}
        steps = [self.episodes[key].rows[int(pos)]["step"] for key, pos in zip(raw.episode_keys, raw.thoughts)]
        facts = [self.facts_at(key, step) for key, step in zip(raw.episode_keys, steps)]
        raw.thoughts[:] = read_lines(self.readout, np.stack(raw.images), raw.tasks, facts)
        return {"with_facts": sum(1 for f in facts if f),
                "outside_line": sum(not plan_is_allowed(format_plan(line, subtask))
                                    for line, subtask in zip(raw.thoughts, raw.plan_subtasks))}


@torch.no_grad()
def read_lines(readout, images: np.ndarray, tasks: list[str], facts: list, chunk: int = 256) -> list[str]:
    """The scene lines a grounded planner's read-out writes for frames uint8 [N, n_cam, S, S, 3] (its
    reading with `facts`, each row's facts in force, applied: policies/pi05/policy.py decode_grounded)."""
    from policies.pi05.objects import read_scenes
    from policies.scene_line import apply_facts, format_scene

    was_training = readout.training
    readout.eval()
    device = next(readout.parameters()).device
    lines: list[str] = []
    try:
        for start in range(0, len(images), chunk):
            part = slice(start, start + chunk)
            features = readout.features(torch.from_numpy(np.ascontiguousarray(images[part])).to(device))
            for scene, said, task in zip(read_scenes(readout.heads(features), tasks[part]), facts[part], tasks[part]):
                lines.append(format_scene(apply_facts(scene, said, task) if said else scene))
    finally:
        readout.train(was_training)
    return lines


def recorded_facts(paths: list[str], log) -> dict[str, list[tuple[int, tuple]]]:
    """Per episode ("session_id/episode"), the facts in force at each decision, in step order: from an
    SFT export's rows (each decision's planner context) or the sessions' plans (the context each read).
    Pairs and LeRobot exports carry no structured context: their episodes get none."""
    from policies.scene_line import Fact

    out: dict[str, list[tuple[int, tuple]]] = {}
    for path in map(Path, paths):
        kind = coaching_data_kind(path)
        if kind == "export":
            import pyarrow.parquet as pq

            meta = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
            if meta.get("format") != "sft":
                log(f"{path}: a {meta.get('format')} export records no facts said; its scene lines are the "
                    f"read-out's alone")
                continue
            for name in meta.get("files", {}).values():
                if "context" not in pq.read_schema(path / name).names:
                    continue
                for r in pq.read_table(path / name, columns=["session_id", "episode", "step", "context"]).to_pylist():
                    facts = tuple(Fact.from_dict(f) for f in (r["context"] or {}).get("facts") or ())
                    out.setdefault(f"{r['session_id']}/{r['episode']}", []).append((r["step"], facts))
        elif kind == "lerobot":
            log(f"{path}: a lerobot export records no facts said; its scene lines are the read-out's alone")
        else:
            from sessions.reader import iter_sessions

            for session in iter_sessions([path], on_error=lambda p, e: None):
                for ep in session.episodes:
                    for plan in sorted(ep.plans, key=lambda p: p.plan_id):
                        if plan.context is not None:
                            facts = tuple(Fact(**f.model_dump()) for f in plan.context.facts)
                            out.setdefault(f"{session.header.session_id}/{ep.episode}", []).append((plan.step, facts))
    for decisions in out.values():
        decisions.sort(key=lambda d: d[0])  # stable: at one step, the last recorded is the one in force
    return {key: decisions for key, decisions in out.items() if any(f for _, f in decisions)}
