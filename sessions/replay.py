"""Replay a recorded session: a rich timeline in the terminal, or an annotated mp4.

The video shows the chosen camera (upscaled, nearest neighbour) above a caption panel with the
task, the subtask and thought in force, and each correction for a few seconds after it came.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sessions.reader import EpisodeData, Session
from sessions.schema import CorrectionRecord, PlanEmitted
from sessions.textdraw import GLYPH_H, GLYPH_W, draw_text, wrap
from sessions.video import VideoWriter

KIND_STYLE = {
    "override": "bold magenta",
    "negation": "bold red",
    "constraint": "bold yellow",
    "nudge": "cyan",
    "stop": "bold red",
    "pause": "yellow",
    "resume": "green",
    "confirm": "green",
}


def select_episodes(session: Session, episodes: list[int] | None) -> list[EpisodeData]:
    if not episodes:
        return session.episodes
    known = {ep.episode: ep for ep in session.episodes}
    missing = [e for e in episodes if e not in known]
    if missing:
        raise ValueError(f"{session.path}: no episode {missing}; episodes present: {sorted(known)}")
    return [known[e] for e in episodes]


# ----------------------------------------------------------------------------- timeline


def print_timeline(session: Session, console, episodes: list[int] | None = None, steps: bool = False) -> None:
    """Session summary, then per episode its plans, corrections and outcome in step order."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    chosen = select_episodes(session, episodes)
    h = session.header
    kinds = Counter(c.kind.value for ep in session.episodes for c in ep.active_corrections)
    ended = [ep for ep in session.episodes if ep.end is not None]
    successes = sum(ep.end.success for ep in ended)
    summary = Text()
    summary.append(f"{session.path}\n", style="bold")
    summary.append(f"session {h.session_id}  created {h.created}  hivla {h.hivla_version}\n")
    summary.append(f"high level {h.high_level}   low level {h.low_level}   {h.fps:g} fps   cameras {', '.join(f'{k} {v[0]}x{v[1]}' for k, v in h.cameras.items())}\n")
    summary.append(f"{len(session.episodes)} episodes, {session.num_steps} steps, ")
    summary.append(f"{successes}/{len(ended)} successful" if ended else "none finished")
    summary.append("   corrections: " + (", ".join(f"{k} {n}" for k, n in kinds.most_common()) or "none"))
    for warning in session.warnings:
        summary.append(f"\nnote: {warning}", style="yellow")
    console.print(Panel(summary, title="hivla session", expand=False))

    for ep in chosen:
        table = Table(title=Text(_episode_title(ep), style="bold"), title_justify="left", show_lines=False, expand=False)
        table.add_column("step", justify="right")
        table.add_column("t (s)", justify="right")
        table.add_column("event")
        table.add_column("details", overflow="fold")
        for kind, step, row in _timeline_rows(ep, steps):
            table.add_row(str(step), f"{_time_at(ep, step):.1f}", *row)
        console.print(table)
        console.print(_outcome(ep))
        for what in ep.dropped:  # what the reader dropped from this episode
            console.print(Text(f"  note: {what}", style="yellow"))
        console.print()


def _episode_title(ep: EpisodeData) -> str:
    s = ep.start
    bits = [f"episode {s.episode}", repr(s.task)]
    if s.family:
        bits.append(f"family {s.family}")
    if s.seed is not None:
        bits.append(f"seed {s.seed}")
    bits.append(f"{len(ep.steps)} steps")
    return "  ".join(bits)


def _outcome(ep: EpisodeData):
    from rich.text import Text

    if ep.truncated:
        return Text(f"  outcome unknown: truncated after step {ep.steps[-1].step if ep.steps else '-'} (steps at the end were lost)", style="yellow")
    if ep.end is None:
        return Text(f"  no end recorded (session cut off after step {ep.steps[-1].step if ep.steps else '-'})", style="yellow")
    e = ep.end
    style = "bold green" if e.success else "bold red"
    return Text(f"  outcome: {'success' if e.success else 'failure'} ({e.reason}), {e.subtasks_completed}/{e.subtasks_total} subtasks, {e.steps} steps", style=style)


def _time_at(ep: EpisodeData, step: int) -> float:
    if not ep.steps:
        return 0.0
    return ep.steps[ep.position_of_step(step)].time


def _timeline_rows(ep: EpisodeData, with_steps: bool) -> Iterator[tuple[str, int, tuple]]:
    from rich.text import Text

    events: list[tuple[int, int, object]] = []
    for p in ep.plans:  # a plan adopted because of a correction comes after it
        events.append((p.step, 2 if p.reason == "correction" else 0, p))
    for c in ep.corrections:
        events.append((c.step, 1, c))
    if with_steps:
        for s in ep.steps:
            events.append((s.step, 3, s))
    events.sort(key=lambda e: (e[0], e[1]))
    for step, _, ev in events:
        if isinstance(ev, PlanEmitted):
            src = ev.plan.source
            detail = Text()
            detail.append(ev.plan.subtask, style="bold")
            if ev.plan.thought:
                detail.append(f"  -- {ev.plan.thought}", style="dim")
            label = Text(f"plan ({ev.reason}, {src})", style="orange1" if src == "human" else "blue")
            yield "plan", step, (label, detail)
        elif isinstance(ev, CorrectionRecord):
            kind = ev.kind.value
            label = Text(f"correction {kind}", style=KIND_STYLE.get(kind, "bold"))
            detail = Text()
            detail.append(f"{ev.speaker}: \"{ev.text}\"", style="strike" if ev.withdrawn else "")
            if ev.withdrawn:
                detail.append(" (withdrawn)", style="yellow")
            if ev.replaced_plan is not None:
                detail.append(f"\n  replaced: {ev.replaced_plan.subtask}", style="dim")
            if ev.resulting_plan is not None:
                detail.append(f"\n  now: {ev.resulting_plan.subtask}")
            if ev.mistake:
                detail.append(f"\n  mistake: {ev.mistake}", style="dim")
            if ev.suspect_from_step is not None:
                detail.append(f"\n  suspect since step {ev.suspect_from_step}", style="dim")
            yield "correction", step, (label, detail)
        else:
            action = ", ".join(f"{a:+.2f}" for a in ev.action)
            yield "step", step, (Text("step", style="dim"), Text(f"{ev.subtask or '-'}  [{action}]" + ("  paused" if ev.paused else ""), style="dim"))


# ----------------------------------------------------------------------------- video

CORRECTION_SHOW_S = 3.0  # how long a correction stays on screen
_BG = (24, 24, 28)
_COLORS = {
    "dim": (150, 150, 160),
    "text": (235, 235, 235),
    "subtask": (120, 230, 120),
    "human": (255, 170, 60),
    "correction": (255, 220, 80),
    "withdrawn": (150, 150, 160),
    "success": (120, 230, 120),
    "failure": (255, 100, 100),
}
_PANEL_LINES = 8


class _Layout:
    def __init__(self, image_h: int, image_w: int, target_width: int = 512) -> None:
        self.zoom = max(1, math.ceil(target_width / image_w))
        self.width = image_w * self.zoom
        self.scale = 2 if self.width >= 384 else 1
        self.line_h = (GLYPH_H + 3) * self.scale
        self.chars = max(8, (self.width - 8) // ((GLYPH_W + 1) * self.scale))
        self.image_h = image_h * self.zoom
        panel = _PANEL_LINES * self.line_h + 8
        self.height = self.image_h + panel + (self.image_h + panel) % 2


def render_video(
    session: Session,
    out: str | Path,
    camera: str = "front",
    episodes: list[int] | None = None,
    codec: str = "h264",
    width: int = 512,
) -> int:
    """Write the annotated replay to `out`; returns the number of frames."""
    chosen = [ep for ep in select_episodes(session, episodes) if ep.steps]
    if not chosen:
        raise ValueError(f"{session.path}: no recorded steps to render")
    if camera not in session.header.cameras:
        raise ValueError(f"{session.path}: no camera {camera!r}; cameras: {sorted(session.header.cameras)}")
    h, w = session.header.cameras[camera]
    layout = _Layout(h, w, width)
    fps = session.header.fps
    with VideoWriter(out, fps, codec) as writer:
        for ep in chosen:
            frames = ep.frames(camera)
            plans = {p.plan_id: p for p in ep.plans}
            for position in range(len(ep.steps)):
                writer.write(_compose(ep, position, frames[position], plans, layout, fps))
    return writer.frames


def _compose(
    ep: EpisodeData, position: int, image: np.ndarray, plans: dict[int, PlanEmitted], layout: _Layout, fps: float
) -> np.ndarray:
    step = ep.steps[position]
    canvas = np.empty((layout.height, layout.width, 3), dtype=np.uint8)
    canvas[:] = _BG
    if image.shape[:2] != (layout.image_h // layout.zoom, layout.width // layout.zoom):
        # a frame of another size (should not happen): fit by nearest neighbour
        ys = np.linspace(0, image.shape[0] - 1, layout.image_h // layout.zoom).astype(int)
        xs = np.linspace(0, image.shape[1] - 1, layout.width // layout.zoom).astype(int)
        image = image[ys][:, xs]
    canvas[: layout.image_h] = image.repeat(layout.zoom, axis=0).repeat(layout.zoom, axis=1)

    recent = [c for c in ep.corrections if 0 <= step.step - c.step <= CORRECTION_SHOW_S * fps]
    if any(step.step - c.step <= fps // 2 and not c.withdrawn for c in recent):
        t = 2 * layout.scale  # a coloured frame for the half second after a correction
        canvas[:t, : layout.width] = canvas[layout.image_h - t : layout.image_h] = _COLORS["correction"]
        canvas[: layout.image_h, :t] = canvas[: layout.image_h, layout.width - t : layout.width] = _COLORS["correction"]

    lines: list[tuple[str, tuple[int, int, int]]] = []
    status = f"ep {ep.episode}  step {step.step}  t {step.time:.1f}s"
    if step.paused:
        status += "  PAUSED"
    lines.append((status, _COLORS["dim"]))
    lines += [(s, _COLORS["text"]) for s in wrap(f"task: {ep.task}", layout.chars)[:2]]
    plan = plans.get(step.plan_id) if step.plan_id is not None else None
    human = plan is not None and plan.plan.source == "human"
    lines += [(s, _COLORS["human" if human else "subtask"]) for s in wrap(f"subtask: {step.subtask or '-'}" + (" (human)" if human else ""), layout.chars)[:1]]
    if plan is not None and plan.plan.thought:
        lines += [(s, _COLORS["dim"]) for s in wrap(f"thought: {plan.plan.thought}", layout.chars)[:2]]
    for c in recent[-2:]:
        color = _COLORS["withdrawn" if c.withdrawn else "correction"]
        text = f"[{c.kind.value}] {c.text}" + (" (withdrawn)" if c.withdrawn else "")
        lines += [(s, color) for s in wrap(text, layout.chars)[:1]]
    if position == len(ep.steps) - 1 and ep.end is not None:
        e = ep.end
        verdict = f"{'SUCCESS' if e.success else 'FAILED'} ({e.reason}) {e.subtasks_completed}/{e.subtasks_total} subtasks"
        lines.append((verdict, _COLORS["success" if e.success else "failure"]))
    y = layout.image_h + 4
    for text, color in lines[-_PANEL_LINES:] if len(lines) > _PANEL_LINES else lines:
        draw_text(canvas, 4, y, text, color, layout.scale)
        y += layout.line_h
    return canvas
