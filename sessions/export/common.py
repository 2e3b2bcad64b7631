"""What every exporter shares: options, decision points, filters, the split, safe output."""

from __future__ import annotations

import glob
import json
import os
import random
import re
import shutil
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from policies.planning import format_plan, record_completion
from policies.planning import planner_context as build_context
from policies.scene_line import DRAWER, NAMED, Fact
from sessions.reader import EpisodeData, Session
from sessions.schema import ContextData, CorrectionRecord, PlanData, PlanEmitted

FORMATS = ("lerobot", "sft", "pairs")
# Corrections that steer execution without saying anything about what to do next.
CONTROL_KINDS = {"stop", "pause", "resume"}
EXPORT_FORMAT_VERSION = 1


class ExportError(Exception):
    """The export as a whole cannot proceed (bad options, output in the way)."""


@dataclass
class ExportOptions:
    format: str = "lerobot"
    kinds: list[str] | None = None  # correction kinds to keep, "plan" for plan rows (None: all but control kinds)
    families: list[str] | None = None  # task families to keep
    sources: list[str] | None = None  # model|human|oracle (plan source) or human|scripted (correction speaker)
    only_corrections: bool = False
    val_fraction: float = 0.0
    seed: int = 0
    max_frames_before: int | None = None  # window around each correction (lerobot, pairs), history frames (sft)
    max_frames_after: int | None = None
    include_withdrawn: bool = False
    correction_weight: float = 1.0
    video_codec: str = "h264"
    force: bool = False

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise ExportError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ExportError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("max_frames_before", "max_frames_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ExportError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if self.correction_weight < 0:
            raise ExportError(f"--correction-weight must be >= 0, got {self.correction_weight}")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class DecisionPoint:
    """One moment the high level chose (or was told) a subtask: a plan or a correction."""

    session: Session
    episode: EpisodeData
    step: int
    position: int  # index into episode.steps of the frame shown at this decision
    kind: str  # "plan" or a correction kind
    source: str  # plan source (model|human|oracle) or correction speaker (human|scripted)
    target: PlanData | None  # what the high level should output here
    plan: PlanEmitted | None = None
    correction: CorrectionRecord | None = None
    weight: float = 1.0
    corrected: bool = False  # a plan that a later correction replaced


def fact_frame_step(ep: EpisodeData, c: CorrectionRecord) -> int:
    """The step whose frames a fact refers to: the reading it corrects, what a read-out fine-tune learns
    it on (agent/training/facts_finetune.py). A fact the scripted coach said because the plan's scene
    line was wrong (mistake "wrong_belief") corrects the line of the plan in force when it was said
    (`replaced_plan`), read from the frames of the step that plan was asked at; by the time the coach
    speaks (its reaction time later) the robot has moved on, and the read-out may already read that
    object right. Any other fact (a person's): the step it was said at, the frames they saw."""
    if c.fact is None or c.speaker != "scripted" or c.mistake != "wrong_belief" or not ep.steps:
        return c.step
    before = ep.steps[ep.position_of_step(c.step - 1)]
    plan = next((p for p in ep.plans if p.plan_id == before.plan_id), None) if before.step < c.step else None
    if plan is None or (c.replaced_plan is not None and plan.plan.thought != c.replaced_plan.thought):
        return c.step
    asked = plan.asked_step if plan.asked_step is not None else plan.step
    if asked > c.step or ep.steps[ep.position_of_step(asked)].step != asked:  # its frame was not kept
        return c.step
    return asked


def fact_span_steps(ep: EpisodeData, c: CorrectionRecord, at: int, window: int, stride: int = 1) -> list[int]:
    """The kept steps within `window` steps of `at` (fact_frame_step) at which a fact still holds by the
    runtime's own rule (policies.scene_line.Fact.ended_by): walking from `at` either way, up to the first
    step whose subtask in force moves what the fact is about. A read-out fine-tune learns a fact on all of
    them (the same object in the same place, seen with the arm elsewhere), every `stride`-th step, `at`
    first. A fact about a held or moving block, or whose own frame's subtask moves it, holds at `at` alone.
    A fact says what is true from its frame on. Before it, it holds only where nothing the robot did could
    have made it true: a block that is not there, the drawer's state (until a drawer subtask), a bowl; a
    block's place, not (a block knocked off a tower by picking the block beneath is "on the table" now,
    on the tower a moment before, and no subtask names it: benchmarks/fact_label_audit.py, 51 of the 59
    false labels of a span walking back for block places too). Walking back, a subtask putting down what
    the gripper holds ends it as well: the block it puts down may be the one the fact names.
    """
    if c.fact is None or not ep.steps or window <= 0:
        return [at]
    fact = Fact.from_dict(c.fact.model_dump())
    here = ep.position_of_step(at)
    if fact.place in ("held", "moving") or (ep.steps[here].subtask and fact.ended_by(ep.steps[here].subtask)):
        return [at]
    span = [at]
    for direction in (1, -1) if fact.subject == DRAWER or fact.place in ("absent", NAMED) else (1,):
        position = here + direction
        while 0 <= position < len(ep.steps):
            step = ep.steps[position]
            if abs(step.step - at) > window or (step.subtask and (
                    fact.ended_by(step.subtask) or (direction < 0 and puts_down_held(step.subtask)))):
                break
            if abs(step.step - at) % stride == 0:
                span.append(step.step)
            position += direction
    return span


def puts_down_held(subtask: str) -> bool:
    """Whether a subtask puts down whatever the gripper holds (a block it does not name)."""
    from policies.grammar import PLACE_KINDS, SubtaskParseError, parse_subtask

    try:
        return parse_subtask(subtask).kind in PLACE_KINDS
    except SubtaskParseError:
        return False


def split_of(session_id: str, episode: int, val_fraction: float, seed: int) -> str:
    """train/validation by episode, stable whatever else is exported alongside."""
    if val_fraction <= 0:
        return "train"
    draw = random.Random(f"{seed}:{session_id}:{episode}").random()
    return "validation" if draw < val_fraction else "train"


def episode_selected(ep: EpisodeData, options: ExportOptions) -> bool:
    if options.families and (ep.start.family or "") not in options.families:
        return False
    if options.only_corrections and not selected_corrections(ep, options):
        return False
    return bool(ep.steps)


def selected_corrections(ep: EpisodeData, options: ExportOptions, text_targets: bool = False) -> list[CorrectionRecord]:
    out = []
    for c in ep.corrections:
        if c.withdrawn and not options.include_withdrawn:
            continue
        kind = c.kind.value
        if options.kinds is not None:
            if kind not in options.kinds:
                continue
        elif text_targets and kind in CONTROL_KINDS:
            continue
        if options.sources and c.speaker not in options.sources:
            continue
        out.append(c)
    return out


def decision_points(session: Session, ep: EpisodeData, options: ExportOptions) -> list[DecisionPoint]:
    """Plans and corrections of one episode, in step order, filtered by the options.

    A plan adopted because of a correction is represented by the correction's row (its target is
    that plan), so it is not repeated. Plans a correction replaced get weight 0 and
    `corrected=True`: they are what the model got wrong.
    """
    if not ep.steps:
        return []
    plans_by_step: dict[int, list[PlanEmitted]] = {}
    for p in ep.plans:
        plans_by_step.setdefault(p.step, []).append(p)
    corrected_ids: set[int] = set()
    suspect: list[tuple[int, int]] = []
    for c in ep.corrections:
        if c.withdrawn:
            continue
        if c.suspect_from_step is not None:
            suspect.append((c.suspect_from_step, c.step))
        if c.kind.value in ("override", "negation"):
            in_force = [p for p in ep.plans if p.step < c.step or (p.step == c.step and p.reason != "correction")]
            if in_force:
                corrected_ids.add(in_force[-1].plan_id)
    points: list[DecisionPoint] = []
    for c in selected_corrections(ep, options, text_targets=True):
        target = c.resulting_plan
        if target is None:
            after = [p for p in plans_by_step.get(c.step, []) if p.reason == "correction"]
            target = after[-1].plan if after else c.replaced_plan
        points.append(
            DecisionPoint(
                session=session, episode=ep, step=c.step, position=ep.position_of_step(c.step),
                kind=c.kind.value, source=c.speaker, target=target, correction=c, weight=options.correction_weight,
            )
        )
    if not options.only_corrections and (options.kinds is None or "plan" in options.kinds):
        for p in ep.plans:
            if p.reason == "correction":
                continue
            if options.sources and p.plan.source not in options.sources:
                continue
            corrected = p.plan_id in corrected_ids
            in_suspect = any(lo <= p.step < hi for lo, hi in suspect)
            points.append(
                DecisionPoint(
                    session=session, episode=ep, step=p.step, position=ep.position_of_step(p.step),
                    kind="plan", source=p.plan.source, target=p.plan, plan=p,
                    weight=0.0 if (corrected or in_suspect) else 1.0, corrected=corrected,
                )
            )
    points.sort(key=lambda d: (d.step, d.kind != "plan"))
    return points


def planner_context(ep: EpisodeData, point: DecisionPoint) -> dict:
    """What the planner read at this decision, as plain data ({"task", "done", "in_force",
    "corrections": [{"kind", "text"}], "memory", "facts": [{"subject", "place", "where", "side"}]}; see
    policies.planning.PlannerContext), so a trainer re-renders
    the decision with any prompt (hf: through prompts/hf_planner.toml).

    Sessions of schema 2 record it with each plan: a plan's row reads its own, a correction's row the
    one of the plan the correction caused (it ends with the correction). Sessions of schema 1, and a
    correction that caused no plan (a nudge, a confirm), get the same rule applied to the events: the
    loop applies a step's corrections before it re-plans, so a plan row sees the corrections said at
    its own step; a correction row sees the plans made before its step and itself.
    """
    recorded = _recorded_context(ep, point)
    if recorded is not None:
        return recorded.model_dump(mode="json")
    if point.correction is not None:
        c = point.correction
        before = sorted((p for p in ep.plans if p.step < c.step), key=lambda p: p.plan_id)
        said = [x for x in ep.corrections if not x.withdrawn and (x.step, x.correction_id) <= (c.step, c.correction_id)]
        in_force = c.replaced_plan.subtask if c.replaced_plan is not None else (before[-1].plan.subtask if before else None)
    else:
        plan_id = point.plan.plan_id if point.plan is not None else None
        before = sorted((p for p in ep.plans if plan_id is not None and p.plan_id < plan_id), key=lambda p: p.plan_id)
        said = [x for x in ep.corrections if not x.withdrawn and x.step <= point.step]
        in_force = before[-1].plan.subtask if before else None
    facts = [Fact(**x.fact.model_dump()) for x in said if x.fact is not None]  # said by then (none expire here)
    done: list[str] = []
    # a plan made because its predecessor finished marks that one done, as the loop notes it
    made = sorted(before + ([point.plan] if point.plan is not None else []), key=lambda p: p.plan_id)
    for previous, plan in zip(made, made[1:]):
        if plan.reason == "subtask_done":
            record_completion(done, previous.plan.subtask)
    return build_context(ep.task, done, in_force, said, memory_at(ep, point.step), facts).to_dict()


def memory_at(ep: EpisodeData, step: int) -> list[str]:
    """The rules kept for the session at `step` of this episode, from the recorded rule events (the loop
    applies a step's input, /forget included, before it plans)."""
    kept = {r.rule_id: r.text for r in ep.memory_at_start}
    for event in ep.rules:
        if event.step > step:
            break
        if event.type == "rule_remembered":
            kept[event.rule_id] = event.text
        else:
            kept.pop(event.rule_id, None)
    return list(kept.values())


def _recorded_context(ep: EpisodeData, point: DecisionPoint) -> ContextData | None:
    if point.plan is not None:
        return point.plan.context
    c = point.correction
    caused = [p for p in ep.plans if p.reason == "correction" and p.step >= c.step and p.context is not None
              and _caused_by(c, p.context)]
    return min(caused, key=lambda p: p.plan_id).context if caused else None


def _caused_by(c: CorrectionRecord, context: ContextData) -> bool:
    """Whether a plan read this correction last: its words (a planning kind), or its fact (a fact is
    read as a belief, never as words)."""
    if c.fact is not None:
        return bool(context.facts) and context.facts[-1] == c.fact
    return bool(context.corrections) and context.corrections[-1].text == c.text


def context_text(context: dict) -> str:
    """A decision's planner context (see `planner_context`) as the user text of a chat export."""
    lines = [f"Task: {context['task']}"]
    if context["done"]:
        lines.append("Done: " + "; ".join(context["done"]))
    if context["in_force"]:
        lines.append(f"In force: {context['in_force']}")
    if context["corrections"]:
        lines.append("Corrections: " + " | ".join(f"[{c['kind']}] {c['text']}" for c in context["corrections"]))
    if context.get("memory"):  # rules kept for the session (sessions of schema 3)
        lines.append("Rules kept: " + " | ".join(context["memory"]))
    if context.get("facts"):  # what the person said is true, in place of what the robot saw (schema 4)
        lines.append("Facts: " + " | ".join(Fact.from_dict(f).phrase() for f in context["facts"]))
    lines.append("What should the robot do next? Think briefly, then name the subtask.")
    return "\n".join(lines)


def assistant_text(plan: PlanData | None) -> str:
    """The plan as the high level writes it (policies.planning.format_plan)."""
    return format_plan(plan.thought, plan.subtask) if plan is not None else ""


# ----------------------------------------------------------------------------- safe output

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def safe_name(name: str, what: str = "name") -> str:
    """A single path component from recorded data (camera names, ...), refused if unsafe."""
    if not _SAFE_NAME.match(name) or name in (".", ".."):
        raise ExportError(f"refusing {what} {name!r}: only letters, digits, '_', '-', '.' are allowed in output paths")
    return name


def safe_join(root: Path, *parts: str) -> Path:
    """root/parts..., guaranteed to stay inside root."""
    root_resolved = Path(root).resolve()
    path = Path(root, *parts)
    resolved = path.resolve()
    if resolved != root_resolved and root_resolved not in resolved.parents:
        raise ExportError(f"refusing to write {path}: it would land outside the output directory {root}")
    return path


class StagedOutput:
    """Build the export in a temporary directory beside `out`, move it into place on success.

    Nothing is written at `out` until `commit()`; an existing non-empty `out` is replaced only with
    force=True (and only after the new export is complete). The staging folder is named after this
    process (`.NAME.partial-PID-XXXX`), so what a killed export left behind is removed by the next
    export to the same place once that process is gone. The result gets the mode of the folder it
    replaces, or the umask's default, not the 0700 of a temporary directory.
    """

    def __init__(self, out: str | os.PathLike, force: bool) -> None:
        self.out = Path(out)
        self.force = force
        if self.out.exists() and not self.out.is_dir():
            raise ExportError(f"{self.out} exists and is not a directory")
        if self.out.exists() and any(self.out.iterdir()) and not force:
            raise ExportError(f"{self.out} exists and is not empty; pass --force to replace it")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.mode = stat.S_IMODE(self.out.stat().st_mode) if self.out.exists() else _default_dir_mode()
        remove_stale_staging(self.out)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-{os.getpid()}-", dir=self.out.parent))

    def commit(self) -> Path:
        os.chmod(self.tmp, self.mode)
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


_STAGING = re.compile(r"^\.(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)(?:-.*)?$")


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove `.OUT.partial-PID-*` / `.OUT.old-PID` folders beside `out` whose process has ended."""
    removed = []
    for candidate in out.parent.glob(f".{glob.escape(out.name)}.*"):
        match = _STAGING.match(candidate.name)
        if not match or match["name"] != out.name or not candidate.is_dir() or _alive(int(match["pid"])):
            continue
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(candidate)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or not a pid we can ask about): leave its folder alone
    try:  # a killed process not yet reaped still answers kill(pid, 0): a zombie is gone all the same
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _default_dir_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


@dataclass
class ExportReport:
    """What an export did, for the summary table and the manifest."""

    format: str
    out: Path | None = None
    sessions: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    # What the reader dropped from sessions that were exported: {"session", "episode" (None for the
    # session as a whole), "dropped": [what, ...], "truncated": outcome unknown}
    dropped: list[dict] = field(default_factory=list)
    episodes: int = 0
    frames: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # split -> rows
    by_kind: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def note_damage(self, session: Session) -> None:
        """Record what the reader dropped from `session`, per episode."""
        attached = set()
        for ep in session.episodes:
            if ep.dropped or ep.truncated:
                self.dropped.append({"session": str(session.path), "episode": ep.episode, "dropped": list(ep.dropped),
                                     "truncated": ep.truncated})
                attached.update(f"episode {ep.episode}: {d}" for d in ep.dropped)
        rest = [w for w in session.warnings if w not in attached]
        if rest:
            self.dropped.append({"session": str(session.path), "episode": None, "dropped": rest, "truncated": False})

    def count_kind(self, kind: str) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
