"""The coaching console's status view: what the robot is doing, drawn with rich.

The view is a pure function of a `StatusSnapshot` (a plain copy of the loop's state taken under
its lock), so it can be rendered on any thread, tested without a terminal, and converted to ANSI
text for prompt-toolkit with `render_ansi`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent.console.halfblock import HalfBlockImage, halfblock_fragments
from agent.console.pace import describe_speed
from agent.specs import describe_spec
from policies.scene_line import SCENE_OPEN, split_scene

SOURCE_STYLES = {"model": "bold bright_cyan", "human": "bold bright_magenta", "oracle": "bold yellow"}
KIND_STYLES = {
    "override": "bright_magenta",
    "negation": "bright_red",
    "constraint": "yellow",
    "nudge": "bright_blue",
    "stop": "red",
    "pause": "red",
    "resume": "green",
    "confirm": "green",
}
MAX_CORRECTIONS_SHOWN = 5
MAX_MESSAGES_SHOWN = 4
CAMERA_TITLE = "front camera"


@dataclass
class CorrectionLine:
    kind: str  # a CorrectionKind value
    text: str
    step: int = 0
    withdrawn: bool = False


@dataclass
class StatusSnapshot:
    """Everything the view shows, copied out of the running loop."""

    task: str = ""
    thought: str = ""
    last_seen: str = ""  # the episode's last scene line, shown while the plan in force has none (a person's)
    subtask: str | None = None
    source: str | None = None  # model | human | oracle
    episode: int = 0
    step: int = 0
    sim_time: float = 0.0  # simulated seconds since the episode started
    wall_time: float = 0.0  # wall seconds since the episode started
    paused: bool = False
    finished: str | None = None  # why the episode ended ("success", "timeout", ...), if it did
    subtasks: list[str] = field(default_factory=list)
    subtasks_done: list[bool] = field(default_factory=list)
    corrections: list[CorrectionLine] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # the console's replies, newest last
    front: np.ndarray | None = None  # uint8 [H, W, 3]
    high_level: str = ""
    low_level: str = ""
    session_dir: str = ""
    loop_hz: float | None = None  # measured control-loop rate
    view_fps: float | None = None  # measured view refresh rate
    speed: float | None = None  # the pace asked for (simulated s per wall s); None: as fast as it steps
    paced: bool = False  # whether a pace is in force at all (the console; a headless script is not)
    measured_speed: float | None = None  # the pace as measured
    waiting: str | None = None  # why the robot does not move yet ("press Enter or /go to start")
    plan_change: Any = None  # agent.loop.PlanChange shown for a few seconds after a correction
    memory: list[str] = field(default_factory=list)  # rules remembered for the session, numbered as /rules


def _run_state(snap: StatusSnapshot) -> Text:
    if snap.finished:
        style = "bold green" if snap.finished == "success" else "bold yellow"
        text = Text(f"■ finished: {snap.finished}", style=style)
        if snap.waiting:  # the pause before the next episode
            text.append(f"  ·  {snap.waiting}", style="bold")
        return text
    if snap.waiting:
        return Text(f"⏸ waiting: {snap.waiting}", style="bold yellow")
    if snap.paused:
        return Text("❚❚ paused", style="bold red")
    return Text("▶ running", style="bold green")


def _header(snap: StatusSnapshot) -> Text:
    header = Text.assemble(
        ("hivla coach", "bold"),
        "  ",
        _run_state(snap),
        f"   episode {snap.episode}  step {snap.step}  t={snap.sim_time:5.1f}s  wall {snap.wall_time:5.1f}s",
    )
    if snap.paced:
        header.append(f"   speed {describe_speed(snap.speed)}", style="bold")
        if snap.measured_speed is not None:
            header.append(f" ({snap.measured_speed:.2f})", style="dim")
    rates = []
    if snap.loop_hz is not None:
        rates.append(f"loop {snap.loop_hz:4.1f} Hz")
    if snap.view_fps is not None:
        rates.append(f"view {snap.view_fps:4.1f} fps")
    if rates:
        header.append("   " + "  ".join(rates), style="dim")
    change = _plan_change(snap.plan_change)
    if change is not None:
        header.append("\n")
        header.append_text(change)
    return header


def _plan_change(change: Any) -> Text | None:
    """'↻ [override] "no, the blue one" at step 23: pick up the red block → pick up the blue block'."""
    if change is None:
        return None
    where = f"said at step {change.step} (t={change.sim_time:.1f}s)"
    if change.withdrawn:
        text = Text("↶ withdrawn ", style="bold yellow")
        text.append(f"[{change.kind}] ", style=KIND_STYLES.get(change.kind, "") + " strike")
        text.append(f'"{change.text}"', style="strike")
        text.append(f"  {where}", style="dim")
        if change.new != change.old:
            text.append(f"  plan back to: {change.new or '-'}", style="bold")
        return text
    text = Text("↻ ", style="bold bright_magenta")
    text.append(f"[{change.kind}] ", style=KIND_STYLES.get(change.kind, ""))
    text.append(f'"{change.text}"  ')
    text.append(change.old or "-", style="strike dim")
    text.append("  →  ", style="bold")
    text.append(change.new or "-", style="bold bright_magenta")
    text.append(f"   {where}", style="dim")
    return text


def _progress(snap: StatusSnapshot) -> Text:
    total = len(snap.subtasks)
    done = sum(bool(d) for d in snap.subtasks_done[:total])
    text = Text(f"{done}/{total} subtasks", style="bold")
    # The arrow marks the subtask being worked on: the plan's, where it is still to do (a
    # correction may have changed the order); else the first one not done.
    pending = [i for i, d in enumerate(snap.subtasks_done[:total]) if not d]
    current_index = next((i for i in pending if snap.subtasks[i] == snap.subtask), pending[0] if pending else None)
    change = snap.plan_change
    said_index = None if change is None else change.reference_index
    for i, name in enumerate(snap.subtasks):
        is_done = i < len(snap.subtasks_done) and snap.subtasks_done[i]
        mark, style = ("✓", "green") if is_done else (("→", "bold") if i == current_index else ("·", "dim"))
        text.append(f"\n {mark} {name}", style=style)
        if i == said_index:  # where the robot was when the correction was said
            text.append(f"   ✎ said here, step {change.step}", style="bold bright_magenta")
    if change is not None and said_index is not None and said_index >= len(snap.subtasks):
        text.append(f"\n ✎ said after the last subtask, step {change.step}", style="bold bright_magenta")
    return text


def _corrections(snap: StatusSnapshot) -> Text:
    text = Text()
    recent = snap.corrections[-MAX_CORRECTIONS_SHOWN:]
    if not recent:
        return Text("none yet: type a correction below (/help for commands)", style="dim")
    for i, c in enumerate(recent):
        if i:
            text.append("\n")
        style = KIND_STYLES.get(c.kind, "")
        text.append(f"[{c.kind}]", style=style + (" strike" if c.withdrawn else ""))
        text.append(f" {c.text}", style="strike dim" if c.withdrawn else "")
        text.append(f"  @{c.step}" + ("  (withdrawn)" if c.withdrawn else ""), style="dim")
    return text


def _details(snap: StatusSnapshot) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True, justify="right")
    grid.add_column(overflow="fold")
    grid.add_row("task", Text(snap.task or "-"))
    seen, reason = split_scene(snap.thought)
    if seen:  # what the robot believes, under the task, so a person can see a misreading before it acts on it
        grid.add_row("sees", Text(seen.removeprefix(SCENE_OPEN), style="cyan"))
    elif snap.last_seen:  # a person's plan has no line: what the robot last believed stays in view, marked so
        grid.add_row("sees", Text(snap.last_seen.removeprefix(SCENE_OPEN), style="dim cyan").append("  (last read)", style="dim"))
    grid.add_row("thought", Text(reason or "-", style="italic"))
    subtask = Text(snap.subtask or "-", style="bold")
    if snap.source:
        subtask.append(f"  [{snap.source}]", style=SOURCE_STYLES.get(snap.source, ""))
    grid.add_row("subtask", subtask)
    grid.add_row("progress", _progress(snap))
    grid.add_row("corrections", _corrections(snap))
    if snap.memory:  # rules kept for the session: /forget N drops one
        grid.add_row("remembered", Text("\n".join(f"{i}. {m}" for i, m in enumerate(snap.memory, 1)), style="yellow"))
    policies = f"high {describe_spec(snap.high_level) if snap.high_level else '?'} / " \
               f"low {describe_spec(snap.low_level) if snap.low_level else '?'}"
    grid.add_row("policies", Text(policies, style="dim"))
    if snap.session_dir:
        grid.add_row("session", Text(snap.session_dir, style="dim"))
    return grid


def _messages(snap: StatusSnapshot) -> RenderableType | None:
    if not snap.messages:
        return None
    messages = Text()
    for i, line in enumerate(snap.messages[-MAX_MESSAGES_SHOWN:]):
        messages.append(("\n" if i else "") + line)
    return Panel(messages, title="console", title_align="left", border_style="dim", padding=(0, 1))


def build_view(snap: StatusSnapshot, camera_width: int = 48) -> RenderableType:
    """The whole status view as one rich renderable: header, camera beside details, replies."""
    body = Table.grid(padding=(0, 2))
    if snap.front is not None:
        body.add_column(no_wrap=True)
        body.add_column(ratio=1)
        camera = Group(Text(CAMERA_TITLE, style="dim"), HalfBlockImage(snap.front, camera_width))
        body.add_row(camera, _details(snap))
    else:
        body.add_column(ratio=1)
        body.add_row(_details(snap))
    parts = [_header(snap), body, _messages(snap)]
    return Group(*[p for p in parts if p is not None])


def _console(buffer: io.StringIO, width: int, color: bool) -> Console:
    return Console(
        file=buffer, width=width, force_terminal=color, color_system="truecolor" if color else None,
        legacy_windows=False, emoji=False, highlight=False,
    )


def to_ansi(renderable: RenderableType, width: int) -> str:
    """Render any rich renderable to a truecolor ANSI string `width` columns wide."""
    buffer = io.StringIO()
    _console(buffer, width, color=True).print(renderable, end="")
    return buffer.getvalue()


def render_ansi(snap: StatusSnapshot, width: int = 160, camera_width: int = 48) -> str:
    """The view as a truecolor ANSI string `width` columns wide."""
    return to_ansi(build_view(snap, camera_width), width)


def render_plain(snap: StatusSnapshot, width: int = 160, camera_width: int = 48) -> str:
    """The view as plain text (no colours), e.g. for tests and headless logs."""
    buffer = io.StringIO()
    _console(buffer, width, color=False).print(build_view(snap, camera_width), end="")
    return buffer.getvalue()


_details_cache: dict[tuple, list] = {}
_camera_cache: list = [None, 0, []]  # [image object, width, lines]: the loop publishes a new array per step


def _camera_lines(image: np.ndarray, width: int) -> list[list[tuple[str, str]]]:
    from prompt_toolkit.formatted_text import split_lines

    if _camera_cache[0] is not image or _camera_cache[1] != width:
        _camera_cache[:] = [image, width, list(split_lines(halfblock_fragments(image, width)))]
    return _camera_cache[2]


def _details_lines(snap: StatusSnapshot, width: int) -> list[list[tuple[str, str]]]:
    """The details column as fragment lines, re-rendered only when what it shows changes (the
    plan, progress and corrections change a few times a minute; the view redraws 10 times a second)."""
    from prompt_toolkit.formatted_text import ANSI, split_lines, to_formatted_text

    key = (
        width, snap.task, snap.thought, snap.last_seen, snap.subtask, snap.source, tuple(snap.subtasks), tuple(snap.subtasks_done),
        tuple((c.kind, c.text, c.step, c.withdrawn) for c in snap.corrections), snap.high_level, snap.low_level,
        snap.session_dir, getattr(snap.plan_change, "at", None), tuple(snap.memory),
    )
    lines = _details_cache.get(key)
    if lines is None:
        lines = list(split_lines(to_formatted_text(ANSI(to_ansi(_details(snap), width)))))
        _details_cache.clear()  # one entry is enough: the view shows one state at a time
        _details_cache[key] = lines
    return lines


def render_fragments(
    snap: StatusSnapshot, width: int = 160, camera_width: int = 48, with_messages: bool = True
) -> list[tuple[str, str]]:
    """The same view as prompt-toolkit formatted text, built for speed.

    `with_messages=False` leaves the console's replies out (the app shows them in their own
    window, just above the input line).

    Going through rich for the camera costs ~20 ms a frame (a Style per cell) plus ~10 ms for
    prompt-toolkit to parse the ANSI back; here the camera becomes fragments directly and only
    the text parts go through rich, which keeps a frame near 7 ms on this CPU.
    """
    from prompt_toolkit.formatted_text import ANSI, split_lines, to_formatted_text

    def ansi_lines(renderable: RenderableType, w: int) -> list[list[tuple[str, str]]]:
        return list(split_lines(to_formatted_text(ANSI(to_ansi(renderable, w)))))

    newline = [("", "\n")]
    fragments: list[tuple[str, str]] = []
    for line in ansi_lines(_header(snap), width):
        fragments += line + newline
    if snap.front is not None:
        camera = _camera_lines(snap.front, camera_width)
        camera_cols = sum(len(text) for _, text in camera[0]) if camera else 0
        left = [[("class:dim", CAMERA_TITLE.ljust(camera_cols))]] + camera
        gap = 2
        right = _details_lines(snap, max(20, width - camera_cols - gap))
        for i in range(max(len(left), len(right))):
            row = left[i] if i < len(left) else [("", " " * camera_cols)]
            row = row + [("", " " * gap)] + (right[i] if i < len(right) else [])
            fragments += row + newline
    else:
        for line in _details_lines(snap, width):
            fragments += line + newline
    messages = _messages(snap) if with_messages else None
    if messages is not None:
        for line in ansi_lines(messages, width):
            fragments += line + newline
    return fragments[:-1] if fragments else fragments
