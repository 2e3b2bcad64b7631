"""Training samples from coaching corrections, for `hivla finetune` (pi05).

Where the corrections come from (`--data`): sft, pairs or LeRobot v3 exports (`hivla export`),
whose coaching table (coaching.parquet; a LeRobot export's meta/hivla_coaching.parquet, its frames
in the videos; sessions/export/coaching.py) holds, computed once at export,
what each correction teaches, which of the model's plans the coach let stand, and per step the frames,
state, action and every context a sample needs. Nothing else is read: the sessions an export was made
from may be gone. Session directories are accepted too; their coaching table is built in memory by the
same code the export runs.

Samples (`correction_samples`): the frames around each correction relabelled with what the coach
wanted: up to `before` steps of the mistake before it (from its suspect_from_step; for a wrong
plan, from the step that plan was made, so the decision itself is relabelled) and up to `after`
steps while the taught subtask is being carried out. The context is the subtask in force just
before and, for a share `with_corrections` of the samples (a stable draw per frame), the
corrections said so far in the episode, as the model reads them in a coached run; the others get
none, the context of an uncoached run, where the model must come to do it by itself. (A model
trained only on uncoached contexts may not even parse a context with corrections in it.) The
target is a short thought saying how far the task is ("3 of 6 steps are done.", from the recorded
progress, as the oracle's thoughts do) and the taught subtask.

Approved decisions (`include_approved`): the model's own plans the coach let stand (see
sessions/export/coaching.py), sampled at the step they were made, with the same context and thought.
Without them the fine-tune would only see the states where the model was wrong, and could drift
where it was right (the states coaching visits, DAgger-style, labelled by the coach).

For a wrong plan (mistake wrong_order/wrong_object/broken_constraint) the frames up to and with the
correction show as "last subtask" the one in force before the wrong plan was made: the context in
which the right decision was due (after a finished step, say), not the model's own wrong plan.

The checkpoint's context_last picks what the context names of the episode's progress, from the
table's columns: the subtask in force ("in_force": last_in_force, or the one before a wrong plan as
above), the one completed last ("done": last_done), or ("history") the phrase PlannerContext.last
writes from the subtasks done at the step (the `done` column) and that same subtask in force.

Agreement samples (`agreement_samples`): one per correction, the frame at the moment it was said,
with that same context (the plan it replaced, for other mistakes); the model agrees if it now
decodes the taught subtask.
"""

from __future__ import annotations

import bisect
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.training.dataset import RawSamples, history_context
from policies.pi05.processor import resize_image
from sessions.export.coaching import (
    COACHED_THOUGHT,
    COACHING_FILE,
    PLAN_MISTAKES,
    TEACHING_KINDS,
    CorrectionLabel,
    label_from_row,
)

__all__ = ["COACHED_THOUGHT", "PLAN_MISTAKES", "TEACHING_KINDS", "CorrectionLabel", "CoachedEpisode",
           "CorrectionDataError", "agreement_samples", "correction_samples", "is_held_out", "load_coached_episodes"]
EXPORT_AGAIN = "export again with `hivla export SESSION... --format sft --out DIR`"


class CorrectionDataError(ValueError):
    """Correction data that cannot be used; the message says which path and why."""


@dataclass
class StepRow:
    """What a sample reads of one recorded step."""

    step: int
    state: list[float]
    action: list[float]
    subtask: str | None
    paused: bool


@dataclass
class ExportedEpisode:
    """One episode of a coaching table: its steps in order and, per step, the columns the export computed."""

    key: str  # "session_id/episode"
    task: str
    family: str | None
    rows: list[dict]  # the table's rows, in step order
    steps: list[StepRow] = field(init=False)

    def __post_init__(self) -> None:
        self.steps = [StepRow(r["step"], r["state"], r["action"], r["subtask"], bool(r["paused"])) for r in self.rows]
        self._numbers = [s.step for s in self.steps]

    def column(self, name: str) -> list:
        missing = next((r for r in self.rows if name not in r), None)
        if missing is not None:  # a table written before the column was (a "history" model reads `done`)
            raise CorrectionDataError(f"{missing.get('_source', self.key)}: its coaching table has no {name!r} column "
                                      f"(episode {self.key}), exported before exports carried it; {EXPORT_AGAIN}")
        return [r[name] for r in self.rows]

    def position_of_step(self, step: int) -> int:
        """Index into `steps` of the last step whose number is <= `step` (0 if none is)."""
        return max(0, bisect.bisect_right(self._numbers, step) - 1)

    def frames(self, camera: str) -> np.ndarray:
        """uint8 [T, H, W, 3]: frame i is the image of steps[i] (its PNG, or a LeRobot export's video frame)."""
        from sessions.export.png import decode_png

        cameras = self.rows[0]["cameras"]
        if camera not in cameras:
            raise CorrectionDataError(f"episode {self.key} has no {camera!r} camera (it has {', '.join(cameras)}); "
                                      "the checkpoint reads cameras the coached sessions did not record")
        k = cameras.index(camera)
        return np.stack([decode_png(r["images"][k]["bytes"]) if r.get("images") else r["_videos"].frame(camera, r["index"])
                         for r in self.rows])


class LeRobotVideos:
    """The frames of a LeRobot export (hivla writes one video file a camera), decoded once when first asked."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._frames: dict[str, np.ndarray] = {}

    def frame(self, camera: str, index: int) -> np.ndarray:
        if camera not in self._frames:
            from sessions.export.lerobot import VIDEO_PATH
            from sessions.video import read_video

            path = self.root / VIDEO_PATH.format(video_key=f"observation.images.{camera}", chunk_index=0, file_index=0)
            if not path.is_file():
                raise CorrectionDataError(f"{self.root}: no video {path.relative_to(self.root)}; {EXPORT_AGAIN}")
            self._frames[camera] = read_video(path)
        frames = self._frames[camera]
        if index >= len(frames):
            raise CorrectionDataError(f"{self.root}: frame {index} is past the end of the {camera!r} video "
                                      f"({len(frames)} frames); {EXPORT_AGAIN}")
        return frames[index]


@dataclass
class CoachedEpisode:
    episode: ExportedEpisode
    labels: list  # CorrectionLabel, in step order
    approved: list[tuple[int, str]]  # (step, subtask) of the model's plans the coach let stand

    @property
    def key(self) -> str:
        return self.episode.key


# ---------------------------------------------------------------------------------------------
# where the corrections are
# ---------------------------------------------------------------------------------------------


def _export_rows(export_dir: Path) -> list[dict]:
    """The coaching table of an sft/pairs export."""
    try:
        manifest = json.loads((export_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CorrectionDataError(f"{export_dir}: manifest.json is unreadable ({err}); {EXPORT_AGAIN}") from err
    fmt = manifest.get("format")
    if fmt not in ("sft", "pairs"):
        raise CorrectionDataError(f"{export_dir}: a {fmt!r} export; finetune reads sft, pairs or lerobot exports "
                                  "(or the session directories themselves)")
    name = manifest.get("coaching")
    if not name:
        raise CorrectionDataError(f"{export_dir} was exported before exports carried the fine-tune's labels (no "
                                  f"{COACHING_FILE}); {EXPORT_AGAIN}")
    path = export_dir / name
    if Path(name).name != name or not path.is_file():
        raise CorrectionDataError(f"{export_dir}: its manifest names {name}, which is not there; {EXPORT_AGAIN}")
    return _read_table(path)


def _read_table(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowException) as err:
        raise CorrectionDataError(f"{path} is unreadable ({err}); {EXPORT_AGAIN}") from err


def _lerobot_rows(root: Path) -> list[dict]:
    """The coaching table of a LeRobot v3 export (meta/hivla_coaching.parquet), its frames in the videos."""
    try:
        manifest = json.loads((root / "meta" / "hivla_manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CorrectionDataError(f"{root}: meta/hivla_manifest.json is unreadable ({err}); {EXPORT_AGAIN}") from err
    name = manifest.get("coaching")
    if not name:
        raise CorrectionDataError(f"{root} was exported before exports carried the fine-tune's labels (no "
                                  f"meta/hivla_coaching.parquet); {EXPORT_AGAIN}")
    path = root / name
    if ".." in Path(name).parts or not path.is_file():
        raise CorrectionDataError(f"{root}: its manifest names {name}, which is not there; {EXPORT_AGAIN}")
    videos = LeRobotVideos(root)
    return [{**r, "_videos": videos} for r in _read_table(path)]


def _session_rows(path: Path, log) -> list[dict]:
    """A session directory's coaching table, built in memory as the export builds it."""
    from sessions.export.coaching import coaching_rows
    from sessions.export.common import ExportOptions
    from sessions.reader import iter_sessions

    rows = []
    for session in iter_sessions([path], on_error=lambda found, err: log(f"skipping {found}: {err}")):
        for ep in session.episodes:
            if ep.steps:
                rows.extend(coaching_rows(session, ep, ExportOptions(format="sft")))
    return rows


def coaching_data_kind(path: Path) -> str:
    """What a `--data` path of coached data holds: "export" (an sft or pairs export: manifest.json),
    "lerobot" (a LeRobot v3 export: meta/hivla_manifest.json) or "sessions" (session directories)."""
    if (path / "manifest.json").is_file():
        return "export"
    if (path / "meta" / "hivla_manifest.json").is_file():
        return "lerobot"
    return "sessions"


def load_coached_episodes(paths: Iterable[str | Path], log=print) -> list[CoachedEpisode]:
    """Every coached episode with at least one usable correction or approved plan. An episode found
    in several sources is read once, with the corrections and approved plans each of them chose."""
    by_episode: dict[str, dict[int, dict]] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise CorrectionDataError(f"{p}: no such file or directory")
        kind = coaching_data_kind(p)
        rows = _export_rows(p) if kind == "export" else _lerobot_rows(p) if kind == "lerobot" else _session_rows(p, log)
        for r in rows:
            r["_source"] = str(p)  # for an error that names it
            steps = by_episode.setdefault(f"{r['session_id']}/{r['episode']}", {})
            kept = steps.setdefault(r["step"], r)
            if kept is not r:  # the same step from another source: what it chose counts too
                kept["labels"] = kept["labels"] + [lab for lab in r["labels"] if lab not in kept["labels"]]
                kept["approved"] = kept["approved"] or r["approved"]
    out = []
    for key, steps in by_episode.items():
        rows = [steps[k] for k in sorted(steps)]
        ep = ExportedEpisode(key=key, task=rows[0]["task"], family=rows[0]["family"], rows=rows)
        labels = [label_from_row(key, r["step"], ep.family, lab) for r in rows for lab in r["labels"]]
        approved = [(r["step"], r["approved"]) for r in rows if r["approved"]]
        if labels or approved:
            out.append(CoachedEpisode(ep, labels, approved))
    return out


def is_held_out(episode_key: str, fraction: float) -> bool:
    """A stable episode-level split (crc32 of the key), independent of what else is loaded."""
    return fraction > 0 and (zlib.crc32(episode_key.encode()) % 10_000) / 10_000 < fraction


# ---------------------------------------------------------------------------------------------
# samples
# ---------------------------------------------------------------------------------------------


def _draw(key: str, i: int, share: float) -> bool:
    return share > 0 and (zlib.crc32(f"{key}#{i}".encode()) % 10_000) / 10_000 < share


def _append(raw: RawSamples, ep, frames: dict, i: int, subtask: str, last: str | None, horizon: int,
            image_size: int, key: str, corrections: list[str] | None = None) -> None:
    step = ep.steps[i]
    actions = np.asarray([s.action for s in ep.steps[i: i + horizon]], np.float32)
    chunk = np.zeros((horizon, actions.shape[1]), np.float32)
    chunk[: len(actions)] = actions
    mask = np.zeros(horizon, bool)
    mask[: len(actions)] = True
    raw.images.append(np.stack([resize_image(frames[c][i], image_size) for c in frames]))
    raw.states.append(np.asarray(step.state, np.float32))
    raw.tasks.append(ep.task)
    raw.last_subtasks.append(last)
    raw.corrections.append(list(corrections or []))
    raw.thoughts.append(ep.rows[i]["thought"])
    raw.plan_subtasks.append(subtask)
    raw.subtasks.append(step.subtask or subtask)
    raw.actions.append(chunk)
    raw.action_masks.append(mask)
    raw.episode_keys.append(key)


_IN_FORCE = object()  # "last" is the subtask in force at the previous step, as recorded


def decision_context(lab: CorrectionLabel) -> object:
    """The "last subtask" to show with the frames of a correction's mistake. For a wrong plan, the
    subtask in force before that plan was made (the context in which the right decision was due,
    e.g. the step just finished); otherwise the recorded one."""
    return lab.before_wrong_plan if lab.wrong_plan else _IN_FORCE


def correction_samples(coached: list[CoachedEpisode], cameras: tuple[str, ...], image_size: int, horizon: int,
                       before: int = 10, after: int = 30, include_approved: bool = True,
                       with_corrections: float = 0.5, context_last: str = "in_force") -> tuple[RawSamples, list[int]]:
    """Relabelled frames around every correction (and the approved decisions); returns the samples
    and, per sample, the index of its correction in the flat list of labels (-1: an approved plan).
    With context_last="done" every sample's context names the subtask completed last at its step (what
    the model read there); otherwise the subtask in force, as below, and with "history" the subtasks
    done at its step before it."""
    raw, owner = RawSamples(), []
    n_labels = 0
    for item in coached:
        ep, labels = item.episode, item.labels
        chosen: dict[int, tuple[str, int, object]] = {}  # position -> (subtask, label index, last); corrections win
        if include_approved:
            for step, subtask in item.approved:
                chosen[ep.position_of_step(step)] = (subtask, -1, _IN_FORCE)
        for k, lab in enumerate(labels):
            at = ep.position_of_step(lab.step)
            first = max(0, at - before)
            if lab.suspect_from_step is not None:
                suspect = ep.position_of_step(lab.suspect_from_step)
                if lab.mistake in PLAN_MISTAKES:
                    # the coach first sees a plan the step after it was made: include that decision
                    suspect -= 1
                first = max(first, suspect)
            before_mistake = decision_context(lab)
            for i in range(first, at + 1):
                if not ep.steps[i].paused:
                    chosen[i] = (lab.subtask, n_labels + k, before_mistake)
            i = at + 1
            while i < len(ep.steps) and i <= at + after and ep.steps[i].subtask == lab.subtask:
                if not ep.steps[i].paused:
                    chosen[i] = (lab.subtask, n_labels + k, _IN_FORCE)
                i += 1
        n_labels += len(labels)
        if not chosen:
            continue
        frames = {c: ep.frames(c) for c in cameras}
        done, in_force, said_then = ep.column("last_done"), ep.column("last_in_force"), ep.column("said")
        done_lists = ep.column("done") if context_last == "history" else None
        for i in sorted(chosen):
            subtask, index, last = chosen[i]
            if context_last == "done":
                last = done[i]
            else:
                last = in_force[i] if last is _IN_FORCE else last
                if done_lists is not None:
                    last = history_context(done_lists[i], last)
            said = said_then[i] if _draw(item.key, i, with_corrections) else []
            _append(raw, ep, frames, i, subtask, last, horizon, image_size, item.key, said)
            owner.append(index)
    return raw, owner


def agreement_samples(coached: list[CoachedEpisode], cameras: tuple[str, ...], image_size: int,
                      horizon: int, context_last: str = "in_force") -> tuple[RawSamples, list[CorrectionLabel]]:
    """One sample per correction: the frame when it was said, the replaced plan (or, with
    context_last="done", the subtask completed last; with "history", the subtasks done then before
    the replaced plan) as context; for a wrong plan the subtask in force before it, as in
    correction_samples."""
    raw, labels = RawSamples(), []
    for item in coached:
        if not item.labels:
            continue
        ep = item.episode
        frames = {c: ep.frames(c) for c in cameras}
        done = ep.column("last_done")
        done_lists = ep.column("done") if context_last == "history" else None
        for lab in item.labels:
            at = ep.position_of_step(lab.step)
            if context_last == "done":
                last = done[at]
            else:
                last = decision_context(lab)
                last = lab.replaced if last is _IN_FORCE else last
                if done_lists is not None:
                    last = history_context(done_lists[at], last)
            _append(raw, ep, frames, at, lab.subtask, last, horizon, image_size, item.key)
            labels.append(lab)
    return raw, labels
