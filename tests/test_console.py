"""The coaching console's parts without a terminal: half-block images, the status view, line
checks and command handling (real ControlLoop and classifier on a tiny stand-in world), scripts.

The stand-in world (`ColourLine`) keeps these tests free of MuJoCo: a point on a line must visit
coloured marks; its subtasks use the canonical language ("pick up the red block") so that the
real classifier's canonical subtasks drive it. test_coach_tmux.py covers the real simulator.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from agent.console.app import CoachCompleter, StatusTracker
from agent.console.controller import MAX_LINE_CHARS, CoachController, check_line
from agent.console.halfblock import HalfBlockImage, downsample, halfblock_ansi, halfblock_cells, halfblock_fragments
from agent.console.script import ScriptError, parse_script, run_script
from agent.console.view import CorrectionLine, StatusSnapshot, render_fragments, render_plain
from agent.loop import ControlLoop
from line_world import InOrderPlanner
from policies.types import Correction, CorrectionKind, Observation

# ---------------------------------------------------------------------- a tiny stand-in world

MARKS = {"red": 1.0, "blue": 2.0, "green": 3.0}
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


class ColourLine:
    """Visit the red, blue, green marks in order; 'pick up the X block' is done at mark X."""

    def __init__(self, image_size: int = 16, horizon: int = 400):
        self.image_size = image_size
        self.horizon = horizon

    def reset(self, seed=None, options=None):
        self.x, self.t, self.visited = 0.0, 0, []
        self.task = (options or {}).get("task", "visit the red, blue and green marks")
        return self._obs(), self._info()

    def step(self, action):
        self.x += float(np.clip(action[0], -0.1, 0.1))
        self.t += 1
        for name, where in MARKS.items():
            if name not in self.visited and abs(self.x - where) < 0.05:
                self.visited.append(name)
        return self._obs(), 0.0, False, self.t >= self.horizon, self._info()

    def _image(self):
        img = np.full((self.image_size, self.image_size, 3), 60, np.uint8)
        for name, where in MARKS.items():
            img[-3:, int(where / 4 * self.image_size)] = COLOURS[name]
        img[4:8, min(self.image_size - 1, int(self.x / 4 * self.image_size))] = 255
        return img

    def _obs(self):
        return {"images": {"front": self._image(), "wrist": self._image()}, "state": np.array([self.x], np.float32),
                "task": self.task}

    def _info(self):
        done = [name in self.visited for name in MARKS]
        return {"family": "line", "subtasks": [f"pick up the {n} block" for n in MARKS], "subtasks_done": done,
                "subtask_index": done.index(False) if False in done else len(done), "task_success": all(done),
                "x": self.x}

    def observation(self, obs, info):
        return Observation(images=obs["images"], state=obs["state"], task=obs["task"], time=self.t / 10.0,
                           privileged=info)

    def subtask_done(self, subtask, info):
        target = MARKS.get(subtask.split()[-2]) if len(subtask.split()) >= 2 else None
        return target is not None and abs(info["x"] - target) < 0.05


class GoToMark:
    def reset(self):
        pass

    def act(self, obs: Observation, subtask: str):
        target = MARKS.get(subtask.split()[-2], 0.0)
        return np.tile([[target - float(obs.state[0]), 0, 0, 0, 0]], (4, 1)).astype(np.float32)


def make_loop(recorder=None, **kw) -> ControlLoop:
    loop = ControlLoop(ColourLine(**kw), InOrderPlanner(), GoToMark(), recorder=recorder)
    loop.reset(seed=0)
    return loop


# ---------------------------------------------------------------------- half-block images


def test_halfblock_2x2_exact_colours():
    # Column 0: red over green; column 1: blue over white. One row of two cells.
    img = np.array([[[255, 0, 0], [0, 0, 255]], [[0, 255, 0], [255, 255, 255]]], dtype=np.uint8)
    upper, lower = halfblock_cells(img, width=48)
    assert upper.tolist() == [[[255, 0, 0], [0, 0, 255]]] and lower.tolist() == [[[0, 255, 0], [255, 255, 255]]]
    assert halfblock_ansi(img) == (
        "\x1b[38;2;255;0;0;48;2;0;255;0m▀" "\x1b[38;2;0;0;255;48;2;255;255;255m▀" "\x1b[0m"
    )
    assert halfblock_fragments(img) == [("fg:#ff0000 bg:#00ff00", "▀"), ("fg:#0000ff bg:#ffffff", "▀")]
    # The rich renderable paints the same truecolor pairs.
    buffer = io.StringIO()
    Console(file=buffer, force_terminal=True, color_system="truecolor", width=20).print(HalfBlockImage(img))
    out = buffer.getvalue()
    assert "38;2;255;0;0;48;2;0;255;0m▀" in out and "38;2;0;0;255;48;2;255;255;255m▀" in out


def test_downsample_box_averages_and_pads_odd_heights():
    img = np.zeros((4, 4, 3), np.uint8)
    img[:2, :2] = 100  # top-left 2x2 block
    img[0, 2] = 40  # one pixel of the top-right block
    small = downsample(img, width=2)
    assert small.shape == (2, 2, 3)
    assert small[0, 0].tolist() == [100, 100, 100] and small[0, 1].tolist() == [10, 10, 10]
    odd = downsample(np.full((3, 2, 3), 7, np.uint8), width=48)  # never upscaled, black row added
    assert odd.shape == (4, 2, 3) and odd[3].max() == 0 and odd[:3].min() == 7
    wide = downsample(np.zeros((128, 256, 3), np.uint8), width=48)
    assert wide.shape == (24, 48, 3)  # aspect ratio kept
    with pytest.raises(ValueError, match="uint8"):
        downsample(np.zeros((4, 4), np.float32), 2)


# ---------------------------------------------------------------------- the view


def _snapshot(**kw) -> StatusSnapshot:
    base = dict(
        task="put the red block in the blue bowl",
        thought="the red block is on the table",
        subtask="pick up the red block",
        source="human",
        step=42,
        sim_time=4.2,
        subtasks=["pick up the red block", "place it in the blue bowl"],
        subtasks_done=[True, False],
        corrections=[CorrectionLine("override", "no, the red one first", 30), CorrectionLine("nudge", "a bit left", 35)],
        messages=["› a bit left", "nudge: a bit left"],
        front=np.full((32, 32, 3), 128, np.uint8),
        high_level="oracle",
        low_level="expert",
    )
    base.update(kw)
    return StatusSnapshot(**base)


def test_view_shows_task_subtask_progress_and_corrections():
    text = render_plain(_snapshot(), width=140)
    for expected in ("put the red block in the blue bowl", "the red block is on the table", "pick up the red block",
                     "[human]", "1/2 subtasks", "✓ pick up the red block", "→ place it in the blue bowl",
                     "[override] no, the red one first", "[nudge] a bit left", "step 42", "front camera",
                     "▀", "running"):
        assert expected in text, expected
    assert "paused" in render_plain(_snapshot(paused=True), width=140)
    # After a correction the plan may skip ahead: the arrow follows the subtask being worked on.
    reordered = render_plain(_snapshot(subtasks=["pick up the red block", "pick up the blue block"],
                                       subtasks_done=[False, False], subtask="pick up the blue block"), width=140)
    assert "· pick up the red block" in reordered and "→ pick up the blue block" in reordered
    assert "finished: success" in render_plain(_snapshot(finished="success"), width=140)


def test_fast_fragments_show_the_same_content_with_colours():
    fragments = render_fragments(_snapshot(), width=140, camera_width=16, with_messages=False)
    text = "".join(t for _, t in fragments)
    for expected in ("put the red block in the blue bowl", "pick up the red block", "[override] no, the red one first"):
        assert expected in text
    assert "nudge: a bit left" not in text  # replies live in their own window in the app
    assert ("fg:#808080 bg:#808080", "▀") in fragments  # the camera, as truecolor fragments
    magenta = "".join(t for style, t in fragments if "magenta" in style)
    assert "[human]" in magenta  # the plan's source is coloured (human: magenta)


# ---------------------------------------------------------------------- typed lines


@pytest.mark.parametrize(
    "line, reason",
    [
        ("x" * (MAX_LINE_CHARS + 1), "too long"),
        ("no, the blue one\x1b[A", "control characters"),
        ("拿起红色方块", "only English"),
    ],
)
def test_check_line_refuses_what_it_should_not_guess(line, reason):
    text, problem = check_line(line)
    assert text is None and reason in problem


def test_check_line_folds_accents_and_keeps_symbols():
    assert check_line("  pick up the réd block\t") == ("pick up the red block", None)
    assert check_line("“good”") == ('"good"', None)
    assert check_line("👍") == ("👍", None)


def test_bad_input_gets_a_reply_and_the_loop_goes_on():
    loop = make_loop()
    ctl = CoachController(loop)
    replies = {}
    for line in ["", "   ", "x" * 400, "go\x07 left", "拿起红色方块", "/frobnicate", "/task", "asdf qwer zxcv"]:
        outcome = ctl.handle(line)
        assert outcome.reply and not outcome.quit and outcome.submitted is None, line
        replies[line] = outcome.reply
        loop.step()
    assert "empty" in replies[""] and "unknown command /frobnicate" in replies["/frobnicate"]
    assert "/task needs" in replies["/task"]
    assert loop.snapshot().step == 8 and not loop.snapshot().paused  # nothing reached the loop
    assert ctl.messages[-1] == replies["asdf qwer zxcv"].splitlines()[-1]


def test_corrections_and_commands_reach_the_loop():
    loop = make_loop()
    ctl = CoachController(loop)
    loop.step()
    outcome = ctl.handle("no, the blue one first")
    assert isinstance(outcome.submitted, Correction) and outcome.submitted.kind is CorrectionKind.OVERRIDE
    loop.step()
    snap = loop.snapshot()
    assert snap.plan.subtask == "pick up the blue block" and snap.plan.source == "human"
    assert [c.kind for c in snap.corrections] == [CorrectionKind.OVERRIDE]

    ctl.handle("/pause")
    loop.step()
    assert loop.snapshot().paused
    ctl.handle("/resume")
    loop.step()
    assert not loop.snapshot().paused

    ctl.handle("/undo")
    loop.step()
    assert loop.snapshot().corrections == ()
    assert ctl.loop_replied(loop.snapshot().last_reply).startswith("withdrew")  # the loop's own answer is shown
    assert any(m.startswith("withdrew") for m in ctl.messages)

    assert ctl.handle("/pau").submitted.name.value == "pause"  # an unambiguous prefix stands for the command
    assert "unknown command /re" in ctl.handle("/re").reply  # /resume or /reset: ambiguous, so refused
    assert "/override" in ctl.handle("/help").reply
    assert ctl.handle("/save").reply == "not recording: nothing to save"
    assert ctl.handle("/quit").quit


def test_status_tracker_turns_the_loop_snapshot_into_a_view():
    loop = make_loop()
    ctl = CoachController(loop)
    ctl.handle("not the red one")
    for _ in range(3):
        loop.step()
    status = StatusTracker(ctl, {"high_level": "oracle", "low_level": "expert"}).status(loop.snapshot())
    assert status.subtask == "pick up the blue block" and status.source == "oracle"
    assert [c.kind for c in status.corrections] == ["negation"] and status.step == 3
    assert status.front is not None and status.subtasks[0] == "pick up the red block"
    assert "pick up the blue block" in render_plain(status)


def test_completer_offers_commands_and_forcing_prefixes():
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    def complete(text, tab=False):
        event = CompleteEvent(completion_requested=tab)
        return [c.text for c in CoachCompleter().get_completions(Document(text), event)]

    assert complete("/pa") == ["/pause"]
    assert complete("/t") == ["/task "]
    assert "/override " in complete("/o")
    assert complete("/") [:4] == ["/go", "/pause", "/resume", "/reset"]
    assert complete("ov") == []  # ordinary typing pops nothing up...
    assert complete("ov", tab=True) == ["override: "]  # ...but Tab offers the written prefix
    assert complete("/pause now") == []


# ---------------------------------------------------------------------- headless scripts


def test_parse_script_schedules_lines():
    script = parse_script(["# a comment", "", "@5 no, the blue one first", "/pause", "@40 /resume", "/quit"])
    assert [(s.step, s.text) for s in script] == [(5, "no, the blue one first"), (15, "/pause"), (40, "/resume"),
                                                  (50, "/quit")]
    with pytest.raises(ScriptError, match="line 2"):
        parse_script(["@30 a", "@10 b"])


def test_headless_script_records_a_session(tmp_path):
    from sessions.reader import read_session
    from sessions.recorder import SessionRecorder, make_header

    header = make_header(high_level="stand-in", low_level="stand-in", cameras={"front": (16, 16), "wrist": (16, 16)},
                         state_names=["x"], action_names=["dx", "dy", "dz", "dyaw", "grip"])
    echoed = []
    with SessionRecorder(tmp_path / "s", header) as rec:
        loop = make_loop(recorder=rec)
        ctl = CoachController(loop, rec)
        script = parse_script(["@3 no, the green one first", "@6 /pause", "@9 /undo", "@12 /resume", "@14 /save"])
        reason = run_script(loop, ctl, script, max_steps=20, echo=echoed.append)
        loop.close()
    assert reason == "step limit"
    assert any("saved to" in line for line in echoed) and any("withdrew" in line for line in echoed)
    episode = read_session(tmp_path / "s").episodes[0]
    assert len(episode.steps) == 20 and episode.end is not None and episode.end.reason == "quit"
    assert [s.paused for s in episode.steps[6:12]] == [True] * 6 and not episode.steps[13].paused
    (correction,) = episode.corrections
    assert correction.kind is CorrectionKind.OVERRIDE and correction.resulting_plan.subtask == "pick up the green block"
    assert correction.withdrawn


def test_while_a_persons_plan_is_in_force_the_robots_last_reading_stays_in_view():
    line = "I see: red block on the table at the left; bowls: blue."
    model = render_plain(_snapshot(thought=f"{line} So: pick up the red block", source="model"), width=140)
    assert "sees red block on the table at the left; bowls: blue." in model and "(last read)" not in model
    human = render_plain(_snapshot(thought="The person said so.", source="human", last_seen=line), width=140)
    assert "sees red block on the table at the left; bowls: blue.  (last read)" in human
    assert "sees" not in render_plain(_snapshot(thought="The person said so.", source="human"), width=140)
