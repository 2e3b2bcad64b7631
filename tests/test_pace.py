"""The console's pace: --speed / /speed / /slow / /fast, and the robot held at the first frame
until Enter or /go. The speed is measured from the saved session (simulated seconds per wall
second between recorded steps), not trusted from the setting."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from agent.console.controller import CoachController
from agent.console.pace import SPEED_LADDER, Pace, parse_speed
from agent.console.session import CoachSession
from agent.errors import UserError
from sessions.reader import read_session
from sessions.recorder import SessionRecorder, make_header
from test_console import make_loop

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


def measured_speed(steps, first: int, last: int) -> float:
    """Simulated seconds per wall second between two recorded steps, step by step: the median
    interval, so one late step (a busy CI machine) and the catch-up after it do not decide it."""
    window = steps[first:last + 1]
    sim = np.median(np.diff([s.time for s in window]))
    wall = np.median(np.diff([s.wall_time for s in window]))
    return float(sim / wall)


def test_parse_speed_accepts_numbers_and_max_and_names_the_fix():
    assert parse_speed("0.25") == 0.25 and parse_speed("2x") == 2.0 and parse_speed(" MAX ") is None
    for bad, words in [("fast", "not a number"), ("0", "out of range"), ("nan", "out of range"),
                       ("1e9", "out of range")]:
        with pytest.raises(UserError, match=words):
            parse_speed(bad)


def test_slow_and_fast_walk_the_ladder_and_period_follows_the_speed():
    pace = Pace(0.5)
    assert pace.period() == pytest.approx(0.2)  # 10 Hz control at half real time
    assert pace.faster() == 1.0 and pace.faster() == 2.0 and pace.slower() == 1.0
    pace.set_speed(0.3)
    assert pace.slower() == 0.25 and pace.faster() == 0.5
    pace.set_speed(SPEED_LADDER[-1])
    assert pace.faster() is None and pace.period() == 0.0  # past the top: as fast as it steps
    assert pace.slower() == SPEED_LADDER[-1]
    pace.set_speed(SPEED_LADDER[0])
    assert pace.slower() == SPEED_LADDER[0]


def test_speed_commands_answer_and_bad_values_change_nothing():
    loop = make_loop()
    ctl = CoachController(loop, pace=Pace(0.5))
    assert ctl.handle("/speed 0.25").reply.startswith("speed 0.25×")
    assert ctl.handle("/fast").reply.startswith("speed 0.5×")
    assert ctl.handle("/slow").reply.startswith("speed 0.25×")
    assert "is not a number" in ctl.handle("/speed quick").reply and ctl.pace.speed == 0.25
    assert "needs a value" in ctl.handle("/speed").reply
    assert CoachController(loop).handle("/speed 2").reply == "the pace cannot be changed here"
    assert loop.snapshot().step == 0  # none of it went to the loop


def test_console_waits_at_the_first_frame_until_enter_then_follows_speed(tmp_path):
    header = make_header(high_level="stand-in", low_level="stand-in", cameras={"front": (16, 16), "wrist": (16, 16)},
                         state_names=["x"], action_names=["dx", "dy", "dz", "dyaw", "grip"])
    recorder = SessionRecorder(tmp_path / "session", header)
    loop = make_loop(recorder=recorder, horizon=10_000)
    pace = Pace(1.0, held=True)
    session = CoachSession(loop, recorder, {"high_level": "stand-in", "low_level": "stand-in"}, camera_width=16,
                           pace=pace)
    held_at = []

    def person(pipe) -> None:
        time.sleep(1.2)
        held_at.append(loop.snapshot().step)  # still at the first frame: nobody pressed Enter
        pipe.send_text("\r")
        time.sleep(1.0)
        pipe.send_text("/speed 4\r")
        time.sleep(1.5)  # the stand-in task is done in 30 steps: well before this
        pipe.send_text("/quit\r")

    with create_pipe_input() as pipe:
        typist = threading.Thread(target=person, args=(pipe,), daemon=True)
        typist.start()
        session.run_interactive(history_file="none", input=pipe, output=DummyOutput())
        typist.join()
    session.close()
    steps = read_session(tmp_path / "session").episodes[0].steps
    assert held_at == [0] and len(steps) == 30
    assert measured_speed(steps, 1, 8) == pytest.approx(1.0, rel=0.1)
    assert measured_speed(steps, 18, 29) == pytest.approx(4.0, rel=0.1)


def test_speed_is_measurably_the_setting_headless(tmp_path):
    """--speed 1, then '/speed 0.5', then '/speed 2': each within 10% in the recorded session."""
    out = tmp_path / "session"
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "HIVLA_RUNS_DIR": str(tmp_path / "runs")}
    script = "@20 /speed 0.5\n@32 /speed 2\n"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "coach", "--family", "put_color_in_bowl", "--high-level", "oracle",
         "--low-level", "expert", "--image-size", "32", "--out", str(out), "--speed", "1", "--steps", "72"],
        input=script, capture_output=True, text=True, timeout=100, cwd=REPO, env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "speed 0.5×" in done.stdout and "speed 2×" in done.stdout
    steps = read_session(out).episodes[0].steps
    assert measured_speed(steps, 1, 19) == pytest.approx(1.0, rel=0.1)
    assert measured_speed(steps, 21, 31) == pytest.approx(0.5, rel=0.1)
    assert measured_speed(steps, 33, 71) == pytest.approx(2.0, rel=0.1)
    assert time.monotonic() - started > 2.0 + 2.2 + 1.9  # it really waited


def test_headless_without_speed_is_unpaced(tmp_path):
    from agent.console.script import parse_script, run_script

    loop = make_loop()
    ctl = CoachController(loop, pace=Pace(None))
    started = time.monotonic()
    run_script(loop, ctl, parse_script([]), max_steps=200, echo=lambda _: None, pace=ctl.pace)
    assert time.monotonic() - started < 2.0  # 200 steps at 10 Hz would take 20 s


@pytest.mark.parametrize(
    "args, message",
    [
        (["--speed", "0"], "--speed: speed 0 is out of range; give a value from 0.05 to 20, or 'max'"),
        (["--speed", "slowly"], "--speed: speed 'slowly' is not a number"),
        (["--start-paused"], "--start-paused waits for a person pressing Enter; a script starts at once"),
        (["--episodes", "0"], "--episodes must be at least 1"),
    ],
)
def test_bad_pace_arguments_are_one_line_naming_the_fix(tmp_path, args, message):
    done = subprocess.run([sys.executable, "-m", "agent.cli", "coach", "--script", "-", *args], input="",
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "HIVLA_RUNS_DIR": str(tmp_path)})
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
