"""Teach a grounded planner's object read-out what people said was true (`hivla finetune --readout-facts`).

    hivla run --high-level pi05:policies/checkpoints/grounded --coach facts --episodes 12 --out runs/facts/sessions
    hivla export runs/facts/sessions --format sft --kind fact --out runs/facts/export
    hivla finetune --base policies/checkpoints/grounded --data runs/facts/export --readout-facts \\
                   --base-data runs/grounded_frames runs/grounded_frames_vla --out runs/grounded_facts
    hivla run --high-level pi05:runs/grounded_facts ...

A fact ("the red block is on the table", typed at the console or said by `--coach facts`) is recorded
with the step it was said at (sessions/schema.py CorrectionRecord.fact). It is learned on the frames it
refers to (sessions/export/common.py fact_frame_step): for the scripted coach's (it speaks when the
plan's scene line contradicts the simulator), the frames the contradicted plan was read from, where
the read-out misread it; a person's, the frames of the step they said it at. (Learned at the step
said, the coach's reaction time later, the first facts round found the read-out already reading 32 of
68 facts as stated: those rows taught nothing. At the plan's frames it read 1 of the 68.) Those frames
and the fact make one training row with a partial label: the named object's place, and its bowl or
block (where) and its side when the fact says them; a fact about the drawer labels the drawer's
state, one naming a bowl ("that's the green bowl") says that bowl is there. Every other label of the
frame is IGNORE (policies/pi05/objects.py): the person said nothing about the other objects. Facts are
read from SFT exports (the `fact` column, the frames in `fact_images`; an export made before it had
them: the row's own images, the step said), LeRobot exports (`fact` rows of language_events, their
set_belief call and its frame_index; the frames from the videos, lossy unless exported with
--video-codec lossless) or the session directories themselves.

A training fact the base read-out already reads as stated on its frames teaches nothing but drift: it
is left out (`skip_read_as_stated`) and counted in the summary's facts.skipped ("already read as
stated"). Held-out facts are all kept: their share read as stated before and after is the measure.

Every batch mixes `fact_share` of fact rows with planner frames (`--base-data`, `hivla datagen --mode
planner`) under their full simulator labels, so reading the rest does not regress. The loss is the
read-out's own (place / where / side cross-entropy, smooth L1 on x, the drawer and the bowls), taken
over the fact rows and over the planner frames separately and summed, so a handful of facts is not
drowned by the thousands of labels of the planner frames. `fact_share` 0 is the control arm: the
same fine-tune (steps, lr, batch size, seed) on planner frames alone, no fact row in any batch and no
fact term in the loss, while the facts are still loaded, chosen and evaluated before and after as in
the other arm; it tells what the fine-tune itself does to the reading, with the facts' part taken out.

What is trained (`scope`):
  heads    (default) only the heads that turn the object features into a reading: place, where, side,
           x, drawer and bowls. The trunk, the queries and the projection into the backbone (`proj`)
           are frozen, so the object tokens the backbone reads are bit-identical to the base
           checkpoint's, and so is every backbone and expert weight: given a scene line, every
           decision (and every action) is exactly the base checkpoint's, by construction. Only the
           line the heads write can change, which is the point. The features are computed once and
           cached, so a step costs a few linear layers.
  readout  the whole read-out but `proj` (trunk, queries, heads): more capacity to learn from facts,
           but the object tokens move, so the backbone reads tokens it was not trained on and
           decisions given a line may change; measure them (benchmarks/facts_round.py) before using it.

OUT is a complete grounded checkpoint (`pi05:OUT`): the base checkpoint's files with the read-out's
trained tensors, checkpoint_info.json saying what was trained on what and the evaluation before and
after: on the fact rows (training and held-out episodes: the share of facts the read-out now reads as
stated) and on held-out planner frames of the base data (objects and lines read right, by place kind).
Resumable (`--resume`) through agent/training/loop.py like every recipe; its log is OUT/finetune.log.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agent.training.corrections import CorrectionDataError, coaching_data_kind, is_held_out
from agent.training.loop import Recipe, RecipeSettings, TrainingLoop
from agent.training.readout_trainer import (BELIEF_READ, BELIEF_UNKNOWN, LABELS, FrameSet, beliefs_before,
                                           beliefs_for, evaluate_readout, heads_if_believing,
                                           previous_in_episode, read_episodes)
from policies.checkpoint import CheckpointError
from policies.pi05.objects import (
    Belief, BLOCK_NAMES, BOWL_NAMES, IGNORE, WHERE_NAMES, X_SCALE, ObjectReadout, _masked_ce,
    labels_from_facts, object_correct, read_scenes, unknown_belief,
)
from policies.scene_line import DRAWER, NAMED, PLACES, SIDES, Fact, format_scene, mentions_drawer, scene_from_facts

# the read-out's heads: what `scope="heads"` trains (proj, the tokens the backbone reads, is not one)
HEADS = ("place_head", "where_head", "side_head", "x_head", "drawer_head", "bowl_head")
SCOPES = ("heads", "readout")
UNSAID = ("ignore", "base")
LOG_FILE = "finetune.log"
SUMMARY_FILE = "finetune_summary.json"
MAKE_FACTS = ("record facts with `hivla run --coach facts --out DIR` (or say them at the console), then "
              "`hivla export DIR --format sft --out EXPORT`")
EXPORT_AGAIN = "export the sessions again (`hivla export SESSIONS --format sft --out DIR`)"


@dataclass(kw_only=True)
class FactsFinetuneSettings(RecipeSettings):
    """The fields every run has (data, out, device, dtype, resume, seed, ...) are RecipeSettings'."""

    base: str  # a grounded checkpoint directory
    data: list[str]  # sft / lerobot exports or session directories holding fact corrections
    base_data: list[str] | None = None  # planner-frame directories (default: those the base records)
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    fact_share: float = 0.25  # of every batch: fact rows (the rest: planner frames); 0: the control arm
    scope: str = "heads"
    held_out_fraction: float = 0.2  # fact episodes kept for evaluation
    max_base_frames: int = 20_000
    base_held_out_fraction: float = 0.1  # planner-frame episodes kept for the forgetting check
    skip_read_as_stated: bool = True  # leave out training facts the base read-out already reads as stated
    span: int = 0  # steps either side of a fact's frame it is also learned on while it holds (sessions only)
    span_stride: int = 3  # every Nth step of the span
    unsaid: str = "ignore"  # the labels a fact row leaves unsaid: "ignore" (no loss) or "base" (the base's reading)
    fact_weight: float = 1.0  # the fact rows' mean loss, weighted against the planner frames' (1: equal terms)
    # planner frames whose every label is known, drawn into the fact rows' share: the ceiling a diagnostic
    # compares facts with (benchmarks/closed_loop_frames.py: the plan frames of the coached episodes themselves)
    labelled_frames: list[str] | None = None
    eval_base_frames: int = 1000
    progress: bool = True
    # the read-out carries a belief from the episode's previous plan (Pi05Config.readout_belief; turned on
    # here when the base lacks it, its new tensors gated shut): planner frames train with their frame
    # before's truth or (belief_read) the base read-out's reading of it, none on belief_unknown of them;
    # a fact row with what the base read-out believed on its frame (fact_beliefs)
    belief: bool = False
    memory: bool = False  # ... and carries blocks read earlier (Pi05Config.readout_memory; implies belief)
    belief_unknown: float = BELIEF_UNKNOWN
    belief_read: float = BELIEF_READ

    def validate(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"--readout-scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if not 0.0 <= self.fact_share <= 1.0:  # NaN too
            raise ValueError(f"--fact-share must be in [0, 1] (0: the control arm, planner frames alone), got "
                             f"{self.fact_share}; pass e.g. --fact-share 0.25")
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError("--steps must be >= 0 and --batch-size >= 1")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ValueError(f"--held-out-fraction must be in [0, 1), got {self.held_out_fraction}")
        if self.max_base_frames < 1:
            raise ValueError(f"--max-base-samples must be at least 1, got {self.max_base_frames}")
        if self.span < 0 or self.span_stride < 1:
            raise ValueError(f"--fact-span must be >= 0 and --fact-span-stride >= 1, got {self.span}, "
                             f"{self.span_stride}")
        if not self.fact_weight > 0:
            raise ValueError(f"--fact-weight must be positive, got {self.fact_weight}")
        if self.memory and not self.belief:
            raise ValueError("--readout-memory carries what a belief holds: it needs --readout-belief too")
        if self.belief and self.scope != "readout":
            raise ValueError("--readout-belief trains the read-out's queries to read a belief: pass --readout-scope "
                             "readout (the heads alone cannot learn it)")
        if not (0.0 <= self.belief_unknown <= 1.0 and 0.0 <= self.belief_read <= 1.0):
            raise ValueError(f"the belief's shares must be in [0, 1], got unknown {self.belief_unknown}, "
                             f"read {self.belief_read}")
        if self.unsaid not in UNSAID:
            raise ValueError(f"--fact-unsaid must be one of {', '.join(UNSAID)}, got {self.unsaid!r}")
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"--dtype must be fp32 or bf16, got {self.dtype!r}")
        if not Path(self.base).is_dir():
            raise CheckpointError(f"--base {self.base}: not a checkpoint directory")


# ---------------------------------------------------------------------------------------------
# facts -> partial labels
# ---------------------------------------------------------------------------------------------


def fact_kind(fact: Fact) -> str:
    """What a fact corrects: a block's place (one of PLACES), the drawer's state, or which bowl is there."""
    if fact.subject == DRAWER:
        return "drawer_state"
    if fact.place == NAMED:
        return "bowls"
    return fact.place


def labels_from_fact(fact: Fact) -> dict[str, list] | None:
    """The read-out's labels for one frame from one fact: the named object's, every other IGNORE (x:
    NaN, unknown). None for a fact naming nothing the read-out reads."""
    n = len(BLOCK_NAMES)
    labels = {"place": [IGNORE] * n, "where": [IGNORE] * n, "side": [IGNORE] * n, "x": [math.nan] * n,
              "bowls": [IGNORE] * len(BOWL_NAMES), "drawer": IGNORE}
    if fact.subject == DRAWER:
        labels["drawer"] = int(fact.place == "open")
    elif fact.subject in BOWL_NAMES:  # "that's the green bowl": the green bowl is there
        labels["bowls"][BOWL_NAMES.index(fact.subject)] = 1
    elif fact.subject in BLOCK_NAMES:
        i = BLOCK_NAMES.index(fact.subject)
        labels["place"][i] = PLACES.index(fact.place)
        if fact.place in ("bowl", "block") and fact.where in WHERE_NAMES and fact.where != fact.subject:
            labels["where"][i] = WHERE_NAMES.index(fact.where)
            if fact.where in BOWL_NAMES:  # a block in a bowl says the bowl is there
                labels["bowls"][BOWL_NAMES.index(fact.where)] = 1
        if fact.place == "table" and fact.side in SIDES:
            labels["side"][i] = SIDES.index(fact.side)
    else:
        return None
    return labels


def _label_tensors(rows: list[dict]) -> dict[str, Tensor]:
    return {k: torch.tensor([r[k] for r in rows], dtype=torch.float32 if k == "x" else torch.long) for k in LABELS}


@dataclass
class FactRows:
    """Fact corrections as read-out training rows: the frame it was said at, its partial labels."""

    images: Tensor  # uint8 [N, n_cam, S, S, 3]
    labels: dict[str, Tensor]
    facts: list[Fact]
    episodes: list[str]  # "session_id/episode": the held-out split is by episode
    keys: list[str]  # episode/step said/subject, for messages
    sources: list[str]  # who said it: human | scripted
    skipped: dict[str, int] = field(default_factory=dict)
    lags: list[int] = field(default_factory=list)  # per row: steps from its frames to when it was said
    # more frames each fact holds on (sessions/export/common.py fact_span_steps), and whose fact row each is
    span_images: Tensor | None = None  # uint8 [M, n_cam, S, S, 3]
    span_of: list[int] = field(default_factory=list)
    # per row: the frames of its episode's plans before its own (uint8 [k, n_cam, S, S, 3], k >= 0), from
    # which a read-out that carries a belief forms the one it read the fact's frame with (sessions only: an
    # export keeps no earlier frame, and its rows are read with none)
    history: list[Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.facts)

    def subset(self, idx: list[int]) -> "FactRows":
        t = torch.tensor(idx, dtype=torch.long)
        new_index = {old: new for new, old in enumerate(idx)}
        spans = [j for j, row in enumerate(self.span_of) if row in new_index]
        span_images = self.span_images[torch.tensor(spans, dtype=torch.long)] if self.span_images is not None \
            else None
        return FactRows(self.images[t], {k: v[t] for k, v in self.labels.items()}, [self.facts[i] for i in idx],
                        [self.episodes[i] for i in idx], [self.keys[i] for i in idx], [self.sources[i] for i in idx],
                        dict(self.skipped), [self.lags[i] for i in idx] if self.lags else [], span_images,
                        [new_index[self.span_of[j]] for j in spans],
                        [self.history[i] for i in idx] if self.history else [])

    def training_rows(self) -> tuple[Tensor, dict[str, Tensor]]:
        """Every frame a fact is learned on, its own and its span's, with the fact's labels."""
        if not self.span_of:
            return self.images, self.labels
        of = torch.tensor(self.span_of, dtype=torch.long)
        return (torch.cat([self.images, self.span_images]),
                {k: torch.cat([v, v[of]]) for k, v in self.labels.items()})

    def training_beliefs(self, belief: Belief) -> Belief:
        """A belief per fact row as one per training row (training_rows' order): a span's frames are read
        with their fact's frame's belief."""
        if not self.span_of:
            return belief
        of = torch.tensor(self.span_of, dtype=torch.long)
        return {k: torch.cat([v, v[of]]) for k, v in belief.items()}

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for fact in self.facts:
            out[fact_kind(fact)] = out.get(fact_kind(fact), 0) + 1
        return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# reading facts from exports and sessions
# ---------------------------------------------------------------------------------------------


def _decode(png: bytes, where: str) -> np.ndarray:
    from sessions.export.png import decode_png

    try:
        return decode_png(png)
    except (ValueError, IndexError, zlib.error, struct.error) as err:  # a damaged PNG
        raise CorrectionDataError(f"{where}: a frame is not a readable PNG ({err}); {EXPORT_AGAIN}") from err


def _sft_facts(path: Path, log=print) -> Iterator[tuple]:
    """(episode key, step said, step of its frames, source, fact dict, {camera: frame}) of every fact row
    of an SFT export: the frames the fact refers to (`fact_images`), or in an export made before they
    were written, the row's own (the step said)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CorrectionDataError(f"--data {path}: manifest.json is unreadable ({err}); {EXPORT_AGAIN}") from err
    if manifest.get("format") != "sft":
        raise CorrectionDataError(f"--data {path} is a {manifest.get('format')!r} export, which holds no frame for a "
                                  f"fact; --readout-facts reads sft or lerobot exports or the session directories")
    for name in (manifest.get("files") or {}).values():
        file = path / name
        if Path(name).name != name or not file.is_file():
            raise CorrectionDataError(f"--data {path}: its manifest names {name}, which is not there; {EXPORT_AGAIN}")
        try:
            names = pq.read_schema(file).names
            if "fact" not in names:
                raise CorrectionDataError(f"--data {path} was exported before exports carried facts (no `fact` "
                                          f"column); {EXPORT_AGAIN}")
            seen = [c for c in ("fact_step", "fact_images") if c in names]
            if not seen:
                log(f"{file}: exported before exports carried the frames a fact refers to; its facts are learned on "
                    f"the frames of the step said; {EXPORT_AGAIN}")
            table = pq.read_table(file, columns=["fact", "kind", "images", "cameras", "session_id", "episode", "step",
                                                 "source", *seen], filters=[("kind", "=", "fact")])
        except (OSError, pa.ArrowException) as err:
            raise CorrectionDataError(f"--data {file} is unreadable ({err}); {EXPORT_AGAIN}") from err
        for row in table.to_pylist():
            if not row["fact"]:
                continue
            cameras = row["cameras"] or []
            images, at = row["images"][len(row["images"]) - len(cameras):], row["step"]
            if row.get("fact_images") and row.get("fact_step") is not None:
                images, at = row["fact_images"], row["fact_step"]
            frames = {cam: _decode(image["bytes"], str(file)) for cam, image in zip(cameras, images)}
            yield f"{row['session_id']}/{row['episode']}", row["step"], at, row["source"], row["fact"], frames, [], []


def _lerobot_facts(root: Path) -> Iterator[tuple]:
    """The same from a LeRobot v3 export: its `fact` language events (set_belief's frame_index: the frames
    the fact refers to), the frames from its videos."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from agent.training.corrections import LeRobotVideos
    from sessions.export.lerobot_files import DATA_PATH

    data = root / DATA_PATH.format(chunk_index=0, file_index=0)
    if not data.is_file():
        raise CorrectionDataError(f"--data {root}: no {DATA_PATH.format(chunk_index=0, file_index=0)}; {EXPORT_AGAIN}")
    try:
        rows = pq.read_table(data, columns=["index", "episode_index", "frame_index", "language_events"]).to_pylist()
    except (OSError, pa.ArrowException, KeyError) as err:
        raise CorrectionDataError(f"--data {data} is unreadable ({err}); {EXPORT_AGAIN}") from err
    episodes = {}  # episode_index -> (session_id/episode, first step): the keys the other sources give
    provenance = root / "meta" / "hivla_episodes.parquet"
    if provenance.is_file():
        try:
            for r in pq.read_table(provenance).to_pylist():
                episodes[r["episode_index"]] = (f"{r['session_id']}/{r['source_episode']}", r["first_step"])
        except (OSError, pa.ArrowException, KeyError) as err:
            raise CorrectionDataError(f"--data {provenance} is unreadable ({err}); {EXPORT_AGAIN}") from err
    videos = LeRobotVideos(root)
    cameras = sorted(p.name.removeprefix("observation.images.") for p in (root / "videos").glob("observation.images.*"))
    for row in rows:
        for event in row["language_events"] or ():
            if event.get("style") != "fact" or not event.get("tool_calls"):
                continue
            call = event["tool_calls"][0]
            call = json.loads(call) if isinstance(call, str) else call
            fact = (call.get("function") or {}).get("arguments")
            if isinstance(fact, str):
                fact = json.loads(fact)
            # the frame whose reading it corrects (exports before it was written: this one)
            seen = fact.pop("frame_index", None) if isinstance(fact, dict) else None
            seen = row["frame_index"] if not isinstance(seen, int) or not 0 <= seen <= row["frame_index"] else seen
            frames = {cam: videos.frame(cam, row["index"] - row["frame_index"] + seen) for cam in cameras}
            episode, first = episodes.get(row["episode_index"], (f"{root.name}/{row['episode_index']}", 0))
            yield episode, first + row["frame_index"], first + seen, "export", fact, frames, [], []


def _session_facts(path: Path, log, span: int = 0, stride: int = 1, history: bool = False) -> Iterator[tuple]:
    """The same from session directories: every fact correction not taken back, the frames it refers to,
    (span > 0) the frames of the steps around them it still holds on (fact_span_steps) and (history) the
    frames of the episode's plans before it."""
    from sessions.export.common import fact_frame_step, fact_span_steps
    from sessions.reader import iter_sessions
    from policies.types import CorrectionKind

    for session in iter_sessions([path], on_error=lambda found, err: log(f"skipping {found}: {err}")):
        for ep in session.episodes:
            for c in ep.active_corrections:
                if c.kind is not CorrectionKind.FACT or c.fact is None or not ep.steps:
                    continue
                at = fact_frame_step(ep, c)
                position = ep.position_of_step(at)
                frames = {cam: ep.frame(cam, position) for cam in ep.cameras}
                more = [{cam: ep.frame(cam, ep.position_of_step(step)) for cam in ep.cameras}
                        for step in fact_span_steps(ep, c, at, span, stride)[1:]]
                before = [{cam: ep.frame(cam, ep.position_of_step(step)) for cam in ep.cameras}
                          for step in plan_steps(ep) if step < at] if history else []
                yield (f"{session.header.session_id}/{ep.episode}", c.step, at, c.speaker, c.fact.model_dump(), frames,
                       more, before)


def plan_steps(ep) -> list[int]:
    """The steps a grounded planner wrote its scene line at (the frames it read), in order."""
    return sorted({p.asked_step if p.asked_step is not None else p.step for p in ep.plans
                   if p.plan.thought and p.plan.thought.startswith("I see:")})


def load_fact_rows(paths: list[str | Path], cameras: list[str], image_size: int, log=print, span: int = 0,
                   span_stride: int = 1, history: bool = False) -> FactRows:
    """Every fact in the exports or session directories at `paths`, as read-out rows (a fact found in
    two sources, e.g. an export and its sessions, once). span > 0: from session directories, also the
    frames within `span` steps it still holds on (an export keeps a fact's own frame only). history: from
    session directories, each row's episode's plan frames before its own (FactRows.history)."""
    from policies.pi05.processor import stack_cameras

    images, label_rows, facts, episodes, keys, sources, lags = [], [], [], [], [], [], []
    span_images, span_of, histories = [], [], []
    seen: set[str] = set()
    skipped: dict[str, int] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise CorrectionDataError(f"--data {path}: no such file or directory")
        kind = coaching_data_kind(path)
        if span and kind in ("export", "lerobot"):
            log(f"{path}: an export keeps each fact's own frame only, so its facts are learned there alone; pass "
                f"the session directories to learn each on the frames around it too (--fact-span)")
        found = (_sft_facts(path, log) if kind == "export" else _lerobot_facts(path) if kind == "lerobot"
                 else _session_facts(path, log, span, span_stride, history))
        for episode, step, at, source, data, frames, more, history in found:
            try:
                fact = Fact.from_dict(data)
            except (KeyError, TypeError, ValueError):
                skipped["unreadable fact"] = skipped.get("unreadable fact", 0) + 1
                continue
            key = f"{episode}/{step}/{fact.subject}"
            if key in seen:
                continue
            labels = labels_from_fact(fact)
            if labels is None:
                skipped[f"names no object the read-out reads ({fact.subject})"] = \
                    skipped.get(f"names no object the read-out reads ({fact.subject})", 0) + 1
                continue
            try:
                stacked = stack_cameras(frames, cameras, image_size)
            except ValueError as err:
                raise CorrectionDataError(f"--data {path}: {err}; the model reads {list(cameras)}") from err
            seen.add(key)
            for extra in more:
                span_images.append(stack_cameras(extra, cameras, image_size)), span_of.append(len(facts))
            histories.append(torch.from_numpy(np.stack([stack_cameras(h, cameras, image_size) for h in history]))
                             if history else torch.zeros(0, *stacked.shape, dtype=torch.uint8))
            images.append(stacked), label_rows.append(labels), facts.append(fact)
            episodes.append(episode), keys.append(key), sources.append(source or "?"), lags.append(step - at)
    if not facts:
        raise CorrectionDataError(f"--data {' '.join(map(str, paths))}: no fact correction there; {MAKE_FACTS}")
    rows = FactRows(torch.from_numpy(np.stack(images)), _label_tensors(label_rows), facts, episodes, keys, sources,
                    skipped, lags, torch.from_numpy(np.stack(span_images)) if span_images else None, span_of,
                    histories if history else [])
    before = sum(lag > 0 for lag in lags)
    log(f"facts: {len(rows)} from {len(set(episodes))} episodes; by kind {rows.kinds()}; {before} on the frames "
        f"of a plan they correct (before they were said), {len(rows) - before} on the frames of the step said"
        + (f"; {len(span_of)} more frames they hold on (within {span} steps)" if span else "")
        + (f"; skipped {skipped}" if skipped else ""))
    return rows


# ---------------------------------------------------------------------------------------------
# planner frames (the base data), at most max_frames of them
# ---------------------------------------------------------------------------------------------


def base_frame_dirs(s: FactsFinetuneSettings) -> list[str]:
    """--base-data, or the planner-frame directories the base checkpoint's checkpoint_info.json names."""
    from agent.training.planner_frames import is_planner_frames

    if s.base_data:
        for p in s.base_data:
            if not is_planner_frames(p):
                raise CorrectionDataError(f"--base-data {p}: not planner frames (no planner_frames.json); "
                                          f"--readout-facts mixes in frames recorded by `hivla datagen --mode "
                                          f"planner` (e.g. runs/grounded_frames)")
        return list(s.base_data)
    info = Path(s.base) / "checkpoint_info.json"
    recorded = json.loads(info.read_text()).get("data", []) if info.is_file() else []
    found = [p for p in recorded if is_planner_frames(p)]
    if not found:
        raise CorrectionDataError(f"no base data: pass --base-data (planner-frame directories, `hivla datagen --mode "
                                  f"planner`); none of the data {s.base} records is here: {recorded}")
    return found


def load_base_frames(paths: list[str], image_size: int, max_frames: int, seed: int, log=print) -> FrameSet:
    """Planner frames with their full labels (as readout_trainer.load_frames reads them), from whole
    shards drawn at random until `max_frames` (the last shard cut short)."""
    from agent.training.planner_frames import read_shard, shards
    from policies.pi05.processor import resize_images

    stems = [stem for path in paths for stem in shards(path)]
    if not stems:
        raise CorrectionDataError(f"--base-data {' '.join(paths)}: no planner-frame shards; record some with "
                                  f"`hivla datagen --mode planner`")
    order = torch.randperm(len(stems), generator=torch.Generator().manual_seed(seed)).tolist()
    images, label_rows, episodes, tasks, facts, families, ep_keys = [], [], [], [], [], [], {}
    for i in order:
        if len(tasks) >= max_frames:
            break
        rows, imgs, _ = read_shard(stems[i])  # a damaged shard: one line naming the fix
        keep = min(len(rows), max_frames - len(tasks))
        rows, imgs = rows[:keep], imgs[:keep]
        if imgs.shape[2] != image_size:
            imgs = resize_images(imgs.reshape(-1, *imgs.shape[2:]), image_size).reshape(
                len(imgs), imgs.shape[1], image_size, image_size, 3)
        images.append(imgs)
        for row in rows:
            label_rows.append(labels_from_facts(row["facts"]))
            episodes.append(ep_keys.setdefault(f"{stems[i].parent.name}/{row['episode']}", len(ep_keys)))
            tasks.append(row["context"]["task"])
            facts.append(row["facts"])
            families.append(row.get("family") or "?")
    log(f"planner frames: {len(tasks)} frames of {len(ep_keys)} episodes from {len(stems)} shards in {paths}")
    return FrameSet(torch.from_numpy(np.concatenate(images)), _label_tensors(label_rows), torch.tensor(episodes),
                    tasks, facts, families, previous_in_episode(episodes))


# ---------------------------------------------------------------------------------------------
# the objective and the evaluations
# ---------------------------------------------------------------------------------------------


def readout_loss(out: dict[str, Tensor], labels: dict[str, Tensor]) -> Tensor:
    """The read-out's loss (ObjectReadout.loss's terms and weights) over whatever labels are not IGNORE
    (x: where known and the block present); a term with no label adds zero."""
    place = _masked_ce(out["place"], labels["place"])
    where = _masked_ce(out["where"], labels["where"])
    side = _masked_ce(out["side"], labels["side"])
    known = (labels["place"] > 0) & torch.isfinite(labels["x"])
    x = F.smooth_l1_loss(out["x"][known], labels["x"][known] / X_SCALE, beta=0.05) if known.any() \
        else out["x"].sum() * 0
    drawer = _masked_ce(out["drawer"][:, None], labels["drawer"][:, None])
    loss = place + where + side + x + 0.5 * drawer
    if "bowls" in out:
        loss = loss + 0.5 * _masked_ce(out["bowls"], labels["bowls"])
    return loss


def read_as_stated(out: dict[str, Tensor], labels: dict[str, Tensor]) -> Tensor:
    """bool [B]: every label given (not IGNORE) read right: the stated block's place (and where / side
    where stated), the drawer's state, the bowls named."""
    blocks = (object_correct(out, labels) | (labels["place"] == IGNORE)).all(1)
    drawer = (labels["drawer"] == IGNORE) | (out["drawer"].argmax(-1) == labels["drawer"])
    ok = blocks & drawer
    if "bowls" in out:
        ok = ok & ((labels["bowls"] == IGNORE) | (out["bowls"].argmax(-1) == labels["bowls"])).all(1)
    return ok


class FactsObjective(nn.Module):
    """forward(batch) -> (loss, info), the training loop's contract: the read-out's loss on the fact rows
    plus its loss on the planner frames. A batch holds `features` (scope heads: cached, the frozen
    part's output) or `images` (scope readout), the labels and `is_fact`."""

    def __init__(self, readout: ObjectReadout, scope: str, fact_weight: float = 1.0):
        super().__init__()
        self.readout = readout
        self.fact_weight = fact_weight
        for name, p in readout.named_parameters():
            trained = name.split(".")[0] in HEADS if scope == "heads" else not name.startswith("proj.")
            p.requires_grad_(trained)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        belief = {k.removeprefix("belief_"): v for k, v in batch.items() if k.startswith("belief_")} or None
        features = batch["features"] if "features" in batch else self.readout.features(batch["images"], belief)
        out = {k: v.float() for k, v in self.readout.heads(features).items()}
        is_fact = batch["is_fact"]
        parts = {}
        for name, rows in (("fact", is_fact), ("base", ~is_fact)):
            if rows.any():
                parts[name] = readout_loss({k: v[rows] for k, v in out.items()},
                                           {k: batch[k][rows] for k in LABELS})
            else:
                parts[name] = out["place"].sum() * 0
        loss = self.fact_weight * parts["fact"] + parts["base"]
        info = {"loss": float(loss.detach()), "base_loss": float(parts["base"].detach())}
        if is_fact.any():  # a control arm's batches hold none: no fact term to report (not a 0 that reads as one)
            with torch.no_grad():
                stated = read_as_stated({k: v[is_fact] for k, v in out.items()},
                                        {k: batch[k][is_fact] for k in LABELS})
            info.update(fact_loss=float(parts["fact"].detach()), facts_as_stated=float(stated.float().mean()))
        return loss, info


@torch.no_grad()
def features_of(readout: ObjectReadout, images: Tensor, device: torch.device, batch_size: int = 256) -> Tensor:
    """The read-out's object features (eval mode, fp32) of uint8 frames, on `device`."""
    was = readout.training
    readout.eval()
    out = torch.cat([readout.features(chunk.to(device)).float() for chunk in images.split(batch_size)]) \
        if len(images) else torch.zeros(0)
    readout.train(was)
    return out


@torch.no_grad()
def fact_beliefs(readout: ObjectReadout, rows: FactRows, dtype: str, device: torch.device) -> Belief | None:
    """Per fact row, the belief a read-out that carries one read its frame with: its own reading of the
    episode's plan frames before it, in order (none for a row without them); None: a read-out without."""
    if not readout.reads_belief:
        return None
    frames, previous, last = [], [], []
    for history in rows.history or [torch.zeros(0, *rows.images.shape[1:], dtype=torch.uint8)] * len(rows):
        start = len(previous)
        previous += [-1] + list(range(start, start + len(history) - 1)) if len(history) else []
        frames.append(history)
        last.append(start + len(history) - 1 if len(history) else -1)
    if not previous:
        return unknown_belief(len(rows))
    _, left = read_episodes(readout, torch.cat(frames), torch.tensor(previous), dtype, device)
    return beliefs_before(left, torch.tensor(last, dtype=torch.long))


@torch.no_grad()
def stated_rows(readout: ObjectReadout, rows: FactRows, dtype: str, device: torch.device,
                batch_size: int = 128) -> list[bool]:
    """Per fact row: whether the read-out reads it as stated on its frames (with the belief it would
    carry there, fact_beliefs)."""
    was = readout.training
    readout.eval()
    beliefs = fact_beliefs(readout, rows, dtype, device)
    hits = []
    for idx in torch.arange(len(rows)).split(batch_size):
        belief = None if beliefs is None else {k: v[idx].to(device) for k, v in beliefs.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = {k: v.float() for k, v in readout.heads(readout.features(rows.images[idx].to(device),
                                                                           belief)).items()}
        hits += read_as_stated(out, {k: rows.labels[k][idx].to(device) for k in LABELS}).tolist()
    readout.train(was)
    return hits


def drop_read_as_stated(readout: ObjectReadout, rows: FactRows, dtype: str,
                        device: torch.device) -> tuple[FactRows, int]:
    """The rows the read-out does not yet read as stated (what is left to teach), and how many it does."""
    if not len(rows):
        return rows, 0
    hits = stated_rows(readout, rows, dtype, device)
    keep = [i for i, hit in enumerate(hits) if not hit]
    return rows.subset(keep), len(rows) - len(keep)


@torch.no_grad()
def with_base_reading(readout: ObjectReadout, images: Tensor, labels: dict[str, Tensor], dtype: str,
                      device: torch.device, batch_size: int = 128, beliefs: Belief | None = None) -> dict[str, Tensor]:
    """Fact rows' labels with what the fact leaves unsaid filled from the read-out's own reading of the
    frame (`--fact-unsaid base`): every block the fact does not name takes the place (and where / side /
    x) the read-out reads, the drawer and the bowls too where the fact says nothing of them. A fact row
    then teaches the one object it corrects and holds the rest of that frame's reading where it was
    (left IGNORE, nothing holds the features of the frames facts are said on, which are not like the
    planner frames)."""
    was = readout.training
    readout.eval()
    outs = []
    for idx in torch.arange(len(images)).split(batch_size):
        belief = None if beliefs is None else {k: v[idx].to(device) for k, v in beliefs.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = readout.heads(readout.features(images[idx].to(device), belief))
        outs.append({k: v.float().cpu() for k, v in out.items()})
    readout.train(was)
    out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    filled = {k: v.clone() for k, v in labels.items()}
    unsaid = labels["place"] == IGNORE  # [N, n_blocks]: blocks the fact does not name
    place = out["place"].argmax(-1)
    filled["place"][unsaid] = place[unsaid]
    in_or_on = (place == PLACES.index("bowl")) | (place == PLACES.index("block"))
    filled["where"][unsaid] = torch.where(in_or_on, out["where"].argmax(-1), IGNORE)[unsaid]
    filled["side"][unsaid] = torch.where(place == PLACES.index("table"), out["side"].argmax(-1), IGNORE)[unsaid]
    filled["x"][unsaid] = torch.where(place > 0, out["x"] * X_SCALE, torch.zeros_like(out["x"]))[unsaid]
    drawer = labels["drawer"] == IGNORE
    filled["drawer"][drawer] = out["drawer"].argmax(-1)[drawer]
    if "bowls" in out:
        bowls = labels["bowls"] == IGNORE
        filled["bowls"][bowls] = out["bowls"].argmax(-1)[bowls]
    return filled


@torch.no_grad()
def facts_read(readout: ObjectReadout, rows: FactRows, dtype: str, device: torch.device,
               batch_size: int = 128) -> dict:
    """On fact rows: the share the read-out reads as stated, overall and by kind (None when no rows)."""
    if not len(rows):
        return {"n": 0, "as_stated": None, "by_kind": {}}
    hits = stated_rows(readout, rows, dtype, device, batch_size)
    by_kind: dict[str, list[bool]] = {}
    for fact, hit in zip(rows.facts, hits):
        by_kind.setdefault(fact_kind(fact), []).append(hit)
    return {"n": len(hits), "as_stated": sum(hits) / len(hits),
            "by_kind": {k: {"n": len(v), "as_stated": sum(v) / len(v)} for k, v in sorted(by_kind.items())}}


@torch.no_grad()
def reading_by_kind(readout: ObjectReadout, frames: FrameSet, idx: Tensor, dtype: str, device: torch.device,
                    corrected: tuple[str, ...] = (), batch_size: int = 128,
                    heads: dict[str, Tensor] | None = None) -> dict:
    """evaluate_readout's numbers on the frames `idx` (objects right, lines right, per true place), and
    by what a fact can correct (fact_kind): per place kind, the share of its objects read right and of
    the frames holding one whose whole scene line is right (`absent`: names the scene does not hold,
    read absent); `drawer_state`: frames whose task names the drawer, its state read right. With
    `corrected` (kinds): the same over the frames holding any of them ("corrected_kinds"). `heads`: as
    evaluate_readout takes them (a read-out with a belief is read through its episodes in order)."""
    if heads is None:
        heads = heads_if_believing(readout, frames, idx, dtype, device)
    metrics = evaluate_readout(readout, frames, idx, dtype, device, batch_size, heads=heads)
    was = readout.training
    readout.eval()
    kinds = {k: {"objects": 0, "objects_right": 0, "frames": 0, "lines_right": 0}
             for k in (*PLACES, "drawer_state", "corrected_kinds")}
    for chunk in idx.split(batch_size):
        batch = frames.batch(chunk, device)
        if heads is not None:
            out = {k: v[chunk].to(device) for k, v in heads.items()}
        else:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                out = {k: v.float() for k, v in readout.heads(readout.features(batch["images"])).items()}
        ok = object_correct(out, batch)
        tasks = [frames.tasks[i] for i in chunk.tolist()]
        drawer_ok = (out["drawer"].argmax(-1) == batch["drawer"]).tolist()
        for row, (scene, i) in enumerate(zip(read_scenes(out, tasks), chunk.tolist())):
            true = scene_from_facts(frames.facts[i], frames.tasks[i], bowls=readout.reads_bowls)
            line_right = format_scene(scene) == format_scene(true)
            places, held = batch["place"][row], []
            for p_idx, place in enumerate(PLACES):
                mask = places == p_idx
                if mask.any():
                    held.append(place)
                    _tally(kinds[place], int(mask.sum()), int((ok[row] & mask).sum()), line_right)
            if mentions_drawer(frames.tasks[i]):
                held.append("drawer_state")
                _tally(kinds["drawer_state"], 1, int(drawer_ok[row]), line_right)
            if set(held) & set(corrected):
                mask = torch.tensor([PLACES[p] in corrected for p in places.tolist()], device=places.device)
                n_right = int((ok[row] & mask).sum()) + (int(drawer_ok[row]) if "drawer_state" in held and
                                                         "drawer_state" in corrected else 0)
                n = int(mask.sum()) + int("drawer_state" in held and "drawer_state" in corrected)
                _tally(kinds["corrected_kinds"], n, n_right, line_right)
    readout.train(was)
    shares = {k: {"objects": v["objects"], "objects_right": v["objects_right"] / max(1, v["objects"]),
                  "frames": v["frames"], "lines_right": v["lines_right"] / v["frames"]}
              for k, v in kinds.items() if v["frames"]}
    metrics["corrected_kinds"] = {"kinds": list(corrected), **shares.pop("corrected_kinds", {"frames": 0})}
    metrics["kinds"] = shares
    return metrics


def _tally(k: dict, objects: int, right: int, line_right: bool) -> None:
    k["objects"] += objects
    k["objects_right"] += right
    k["frames"] += 1
    k["lines_right"] += int(line_right)


# ---------------------------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------------------------


def add_belief(model, memory: bool = False) -> None:
    """Give a grounded planner's read-out a belief (Pi05Config.readout_belief; with `memory`, readout_memory
    too): a new read-out with every tensor of the old one and the new ones gated shut or zero, so it reads
    exactly as before until trained."""
    import dataclasses

    cfg = dataclasses.replace(model.cfg, readout_belief=True, readout_memory=memory or model.cfg.readout_memory)
    readout = ObjectReadout(cfg).to(next(model.vision.parameters()).device)
    missing, unexpected = readout.load_state_dict(model.vision.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("belief_") for k in missing), (missing, unexpected)
    model.vision, model.cfg = readout, cfg


def _check_grounded(cfg, base: str) -> None:
    if cfg.vision_stem != "objects":
        raise CheckpointError(f"--readout-facts trains a grounded planner's object read-out; {base} has "
                              f"vision_stem {cfg.vision_stem!r} (no read-out): pass a grounded checkpoint "
                              f"(--preset grounded, e.g. policies/checkpoints/grounded)")


def finetune_readout_on_facts(s: FactsFinetuneSettings) -> dict:
    from policies.pi05.policy import load_checkpoint, load_state_dict_checked, save_checkpoint
    from policies.pi05.configuration import Pi05Config

    s.validate()
    try:  # before OUT is made: a planner without a read-out is refused at once
        cfg = Pi05Config.load(Path(s.base) / "config.json")
    except (OSError, ValueError, TypeError):
        cfg = None  # a missing or damaged config.json: load_checkpoint below says which file and why
    if cfg is not None:
        _check_grounded(cfg, s.base)
    for path in s.data:
        if not Path(path).exists():
            raise CorrectionDataError(f"--data {path}: no such file or directory")
    control = s.fact_share == 0
    label = "read-out on planner frames alone (control, --fact-share 0)" if control else "read-out on facts"
    loop = TrainingLoop(s.loop_settings(weight_decay=s.weight_decay, betas=(0.9, 0.95), log_every=25,
                                        log_file=LOG_FILE, label=label, progress=s.progress))
    out, device, say, state = loop.out, loop.device, loop.log.echo, loop.state
    torch.manual_seed(s.seed)
    try:
        model, processor = load_checkpoint(s.base)
    except CheckpointError as err:  # a truncated or mismatched file: one line, with the fix
        raise CheckpointError(f"{err}; --base needs an intact grounded checkpoint directory: copy it again or "
                              f"train it again (`hivla train --preset grounded`)") from err
    cfg = model.cfg
    _check_grounded(cfg, s.base)
    if s.belief and not cfg.readout_belief or s.memory and not cfg.readout_memory:
        add_belief(model, memory=s.memory)
        cfg = model.cfg
        say("read-out: a belief from the episode's previous plan added"
            f"{', keeping blocks read at earlier plans (memory)' if s.memory else ''} (new tensors shut: it reads "
            f"as the base)")
    model.to(device)
    readout: ObjectReadout = model.vision

    # -- data: fact rows split by episode, planner frames split by episode
    facts = load_fact_rows(s.data, cfg.cameras, cfg.image_size, say, s.span, s.span_stride,
                           history=cfg.readout_belief)
    held = [i for i, ep in enumerate(facts.episodes) if is_held_out(ep, s.held_out_fraction)]
    train = sorted(set(range(len(facts))) - set(held))
    if not train:  # every fact fell in the held-out split: hold none out
        train, held = list(range(len(facts))), []
    fact_train, fact_held = facts.subset(train), facts.subset(held)
    if s.skip_read_as_stated:  # a fact the base already reads as stated on its frames teaches nothing
        fact_train, n_read = drop_read_as_stated(readout, fact_train, s.dtype, device)
        if n_read:
            facts.skipped["already read as stated"] = n_read
            say(f"facts: {n_read} of {n_read + len(fact_train)} training facts already read as stated by the base "
                f"read-out on their frames, left out")
        if not len(fact_train):
            raise CorrectionDataError(f"--data {' '.join(map(str, s.data))}: the base read-out already reads every "
                                      f"training fact as stated ({n_read}); nothing to teach")
    fact_images, fact_labels = fact_train.training_rows()
    # what the base read-out believed on each fact's frame (a read-out that carries a belief; before the
    # resume below loads the trained one): the fact is learned with it, as the robot read that frame
    beliefs = fact_beliefs(readout, fact_train, s.dtype, device)
    fact_belief = None if beliefs is None else fact_train.training_beliefs(beliefs)
    if s.unsaid == "base":  # the base read-out's reading (before the resume below loads the trained one)
        fact_labels = with_base_reading(readout, fact_images, fact_labels, s.dtype, device, beliefs=fact_belief)
    if s.labelled_frames:
        full = load_base_frames(s.labelled_frames, cfg.image_size, s.max_base_frames, s.seed, say)
        fact_images = torch.cat([fact_images, full.images])
        fact_labels = {k: torch.cat([v, full.labels[k]]) for k, v in fact_labels.items()}
        if fact_belief is not None:  # a labelled frame with the truth of the frame before
            full_belief = beliefs_for(full, torch.arange(len(full.tasks)), None, 0.0, 0.0, torch.Generator())
            fact_belief = {k: torch.cat([v, full_belief[k]]) for k, v in fact_belief.items()}
    base_frames = load_base_frames(base_frame_dirs(s), cfg.image_size, s.max_base_frames, s.seed, say)
    read = None  # the base read-out's belief on every planner frame (before the resume below loads the trained one)
    if cfg.readout_belief and s.belief_read > 0:
        read = read_episodes(readout, base_frames.images, base_frames.previous, s.dtype, device)[1]
    if loop.resuming:  # after the facts are chosen: the base read-out chose them, on a resume too
        load_state_dict_checked(model, out / "model.safetensors")
    from agent.training.dataset import split_episodes

    base_train, base_held = split_episodes(base_frames.episode, s.base_held_out_fraction, s.seed)
    g = torch.Generator().manual_seed(s.seed)
    base_eval = base_held[torch.randperm(len(base_held), generator=g)[: s.eval_base_frames]]

    def evaluate() -> dict:
        return {"facts_train": facts_read(readout, fact_train, s.dtype, device),
                "facts_held_out": facts_read(readout, fact_held, s.dtype, device),
                "base_reading": reading_by_kind(readout, base_frames, base_eval, s.dtype, device,
                                                corrected=tuple(fact_train.kinds())) if len(base_eval) else None}

    # -- the pools a batch draws from, on the device: cached features (heads) or the frames (readout)
    def pool(images: Tensor, labels: dict[str, Tensor]) -> dict[str, Tensor]:
        data = {"features": features_of(readout, images, device)} if s.scope == "heads" \
            else {"images": images.to(device)}
        return {**data, **{k: v.to(device) for k, v in labels.items()}}

    n_fact = 0 if control else max(1, round(s.fact_share * s.batch_size))
    n_base = s.batch_size - n_fact if len(base_train) else 0
    if control and not n_base:
        raise CorrectionDataError(f"--fact-share 0 trains on planner frames alone, and every planner-frame episode "
                                  f"of {' '.join(base_frame_dirs(s))} is held out; record more episodes "
                                  f"(`hivla datagen --mode planner`)")
    say(f"read-out on facts ({s.scope}): caching {'features' if s.scope == 'heads' else 'frames'} of "
        + (f"{len(base_train)} planner frames (control: no fact row)" if control else
           f"{len(fact_train)} training facts and {len(base_train)} planner frames"))
    fact_pool = pool(fact_images, fact_labels) if n_fact else {}
    if n_fact and fact_belief is not None:
        fact_pool.update({f"belief_{k}": v.to(device) for k, v in fact_belief.items()})
    base_pool = pool(base_frames.images[base_train], {k: v[base_train] for k, v in base_frames.labels.items()})
    objective = FactsObjective(readout, s.scope, s.fact_weight)
    trained = sorted(name for name, p in readout.named_parameters() if p.requires_grad)
    n_trainable = sum(p.numel() for p in readout.parameters() if p.requires_grad)
    rows = (f"fact rows: 0 (control: no fact trained on; the {len(fact_train)} training facts are only evaluated)"
            if control else f"{n_fact} fact rows")
    say(f"batch {n_fact + n_base} = {rows} + {n_base} planner frames; {n_trainable} trainable "
        f"parameters ({s.scope}: {', '.join(sorted({n.split('.')[0] for n in trained}))})")
    if not loop.resuming:
        state["before"] = evaluate()
        say("before: " + _fmt(state["before"]))
    state.update(facts={"total": len(facts), "train": len(fact_train), "held_out": len(fact_held),
                        "train_frames": len(fact_images), "span": s.span, "unsaid": s.unsaid,
                        "episodes": len(set(facts.episodes)), "by_kind": facts.kinds(),
                        "train_by_kind": fact_train.kinds(), "skipped": facts.skipped,
                        "on_frames_before_said": sum(lag > 0 for lag in facts.lags)},
                 base_frames={"train": len(base_train), "held_out_evaluated": len(base_eval)},
                 trainable_parameters=n_trainable, trained=trained)

    def batches(step: int) -> Iterator[dict]:
        g = torch.Generator().manual_seed(s.seed * 1000 + step)
        while True:
            parts = []
            if n_fact:  # none in the control arm
                fi = torch.randint(0, len(fact_images), (n_fact,), generator=g).to(device)
                parts.append({**{k: v[fi] for k, v in fact_pool.items()},
                              "is_fact": torch.ones(n_fact, dtype=torch.bool, device=device)})
            if n_base:
                bi = torch.randint(0, len(base_train), (n_base,), generator=g).to(device)
                parts.append({**{k: v[bi] for k, v in base_pool.items()},
                              "is_fact": torch.zeros(n_base, dtype=torch.bool, device=device)})
                if cfg.readout_belief:
                    belief = beliefs_for(base_frames, base_train[bi.cpu()], read, s.belief_unknown, s.belief_read, g)
                    parts[-1].update({f"belief_{k}": v.to(device) for k, v in belief.items()})
            yield {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def after(step: int, final: bool) -> dict:
        if final:
            state["after"] = evaluate()
            say(("after (control, no fact trained on):  " if control else "after:  ") + _fmt(state["after"]))
        return {}

    def save(st: dict) -> None:
        base_info = Path(s.base) / "checkpoint_info.json"
        info = json.loads(base_info.read_text()) if base_info.is_file() else {}
        extra = {"preset": info.get("preset", cfg.preset), "data": info.get("data", []),
                 "finetuned_from": str(Path(s.base).resolve()),
                 "readout_facts": {"scope": s.scope, "trained": st.get("trained"), "step": st["step"],
                                   "steps": s.steps, "lr": s.lr, "batch_size": s.batch_size,
                                   "fact_share": s.fact_share, "control": control, "span": s.span,
                                   "span_stride": s.span_stride, "unsaid": s.unsaid, "fact_weight": s.fact_weight,
                                   "labelled_frames": s.labelled_frames, "belief": cfg.readout_belief,
                                   "belief_unknown": s.belief_unknown, "belief_read": s.belief_read,
                                   "facts_data": [str(p) for p in s.data],
                                   "base_data": base_frame_dirs(s), "facts": st.get("facts"),
                                   "base_frames": st.get("base_frames"),
                                   "decisions_given_a_line_unchanged": s.scope == "heads",
                                   "before": st.get("before"), "after": st.get("after")},
                 "base_info": info}
        save_checkpoint(out, model, processor.tok, processor.stats, extra=extra)

    loop.run(Recipe(model=objective, batches=batches, evaluate=after, save=save))
    summary = {k: state.get(k) for k in ("step", "elapsed_s", "before", "after", "facts", "base_frames",
                                           "trainable_parameters", "trained")}
    summary.update(scope=s.scope, fact_share=s.fact_share, control=control,
                   batch={"fact_rows": n_fact, "planner_frames": n_base})
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _fmt(m: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    base = m.get("base_reading") or {}
    return (f"facts read as stated: train {pct(m['facts_train']['as_stated'])} (n={m['facts_train']['n']}), "
            f"held-out {pct(m['facts_held_out']['as_stated'])} (n={m['facts_held_out']['n']}); planner frames "
            f"not trained on here (n={base.get('frames', 0)}): objects {pct(base.get('objects_right'))}, "
            f"lines {pct(base.get('scene_lines_right'))}")
