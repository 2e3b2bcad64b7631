"""`hivla coach` on a real terminal: tmux runs it at 160x50 on the simulator; the tests type like
a person (Enter to start, corrections, /pause, /speed, /quit), read the screen with capture-pane,
and check the saved session with the session reader.

The first test is the newcomer's: `hivla coach` with no flags (shipped learned models, default
task, default speed) waits at the first frame, starts on Enter, and is slow enough that three
corrections typed 2 s apart all land before the episode ends; it then moves on to a second
episode by itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from policies.types import CorrectionKind
from sessions.reader import read_session

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)"),
    pytest.mark.timeout(180),
]


class Tmux:
    """A private tmux server (its own socket), so the test never touches anyone's sessions."""

    def __init__(self, tmp_path: Path) -> None:
        self.socket = f"hivla-test-{os.getpid()}-{time.monotonic_ns()}"
        self.target = "coach"

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=20)
        if done.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def start(self, command: str, env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        self.tmux("new-session", "-d", "-s", self.target, "-x", "160", "-y", "50", f"cd {REPO} && env {exports} {command}")

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.target, "-l", text)
        self.tmux("send-keys", "-t", self.target, "Enter")

    def screen(self, colours: bool = False) -> str:
        return self.tmux("capture-pane", "-t", self.target, "-p", *(["-e"] if colours else []))

    def wait_for(self, pattern: str, timeout: float = 90.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.screen())
            if match:
                return match
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} did not appear on the screen within {timeout} s; screen:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=20)


def _step(screen_text: str) -> int:
    match = re.search(r"step (\d+)", screen_text)
    return int(match.group(1)) if match else -1


def _start_coach(term: Tmux, tmp_path, out, flags: str) -> None:
    """`hivla coach` on put_color_in_bowl seed 0 (oracle + expert) in the tmux terminal; when it exits
    the pane shows HIVLA-EXIT=<code> and stays open to be read."""
    command = (
        f"{sys.executable} -m agent.cli coach --family put_color_in_bowl --seed 0 --high-level oracle "
        f"--low-level expert --image-size 64 --out {out} {flags}"
        "; echo HIVLA-EXIT=$?; sleep 600"
    )
    env = {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "HIVLA_RUNS_DIR": str(tmp_path / "runs"),
           "TERM": "xterm-256color"}
    term.start(command, env)


def test_coach_on_a_terminal_records_correction_pause_and_quit(tmp_path):
    out = tmp_path / "session"
    term = Tmux(tmp_path)
    _start_coach(term, tmp_path, out, f"--history-file {tmp_path / 'history.txt'}")
    try:
        term.wait_for(r"hivla coach .* step \d+", timeout=120)
        term.wait_for(r"subtask .*\[oracle\]")
        # what the robot believes, under the task: the plan's scene line (blocks and places)
        term.wait_for(r"sees .*block (?:on the table at the (?:left|middle|right)|in the \w+ bowl)")
        term.wait_for(r"waiting: press Enter")
        term.type("")  # Enter starts the robot
        deadline = time.monotonic() + 30
        while _step(term.screen()) < 5 and time.monotonic() < deadline:  # let the robot move first
            time.sleep(0.2)

        term.type("leave the blue block alone")
        term.wait_for(r"\[constraint\] leave the blue block alone")
        term.type("/pause")
        term.wait_for(r"❚❚ paused")
        paused_at = _step(term.screen())
        time.sleep(1.5)
        screen = term.screen()
        assert _step(screen) > paused_at, "the loop keeps stepping (and recording) while paused"
        coloured = term.screen(colours=True)
        assert "\x1b[38;2;" in coloured and "▀" in coloured  # the truecolor half-block camera is drawn
        (tmp_path / "screen.ans").write_text(coloured)

        term.type("/quit")
        term.wait_for(r"HIVLA-EXIT=0", timeout=60)
        final = term.screen()
    finally:
        term.kill()
    assert "coach: stopped (/quit)" in final and f"session saved to {out}" in final

    session = read_session(out)
    episode = session.episodes[0]
    assert session.header.high_level == "oracle" and session.header.cameras["front"] == (64, 64)
    corrections = [c for c in episode.corrections if c.kind is CorrectionKind.CONSTRAINT]
    assert corrections and corrections[0].text == "leave the blue block alone"
    assert len(episode.steps) >= 10
    paused = [s.paused for s in episode.steps]
    assert any(paused) and not paused[0] and paused[-1]
    assert episode.end is not None and episode.end.reason == "quit"
    assert episode.frames("front").shape[1:] == (64, 64, 3)


def test_coach_with_no_flags_waits_for_enter_takes_three_corrections_and_goes_on(tmp_path):
    runs = tmp_path / "runs"
    term = Tmux(tmp_path)
    env = {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "HIVLA_RUNS_DIR": str(runs), "TERM": "xterm-256color"}
    term.start(f"{sys.executable} -m agent.cli coach; echo HIVLA-EXIT=$?; sleep 600", env)
    # An override, a nudge, then "stop": the person gives up on this attempt and lets it run out.
    corrections = ["no, pick up the orange block first", "a bit higher", "stop"]
    try:
        term.wait_for(r"waiting: press Enter or /go to start .* step 0 ", timeout=120)
        term.wait_for(r"task .*\S")
        term.wait_for(r"intent model loaded", timeout=120)  # typed lines before it: overrides are asked back
        time.sleep(1.5)
        assert _step(term.screen()) == 0, "the robot waits at the first frame until Enter"
        term.type("")
        term.wait_for(r"▶ running")
        assert re.search(r"speed 0\.5×", term.screen())  # the default pace for a person
        for text in corrections:
            term.type(text)
            time.sleep(2.0)
        term.wait_for(r"\[stop\] stop", timeout=60)
        # The three landed at half real time. The rest of this long episode (28 s simulated when the
        # learned models fail it) need not be watched: the robot holds still after "stop", the
        # person speeds the clock up, and at its time limit the session moves on by itself.
        term.type("/speed max")
        term.wait_for(r"episode 0 (success|failed)[^\n]*3 corrections[^\n]*; the next episode starts in", timeout=120)
        term.type("")  # Enter skips the pause (test_episodes.py covers the pause running out)
        term.wait_for(r"episode 1  step [1-9]", timeout=60)
        term.type("/quit")
        term.wait_for(r"HIVLA-EXIT=0", timeout=60)
        final = term.screen()
    finally:
        term.kill()
    assert re.search(r"episode 0 (success|failed \(timeout\)): .*3 corrections", final), final
    assert "episode 1 ended (quit)" in final or "episode 1 success" in final

    (out,) = runs.glob("coach-*")
    session = read_session(out)
    assert len(session.episodes) >= 2
    first = session.episodes[0]
    assert [c.text for c in first.corrections] == corrections
    assert first.end is not None and first.end.reason in ("success", "timeout")  # ended by itself, not by /quit
    assert all(c.step < first.end.steps for c in first.corrections)  # each landed before the end
    assert [c.step for c in first.corrections] == sorted(c.step for c in first.corrections)
    assert len(session.episodes[1].steps) > 0 and session.episodes[1].start.task


def test_an_unsure_reading_is_asked_back_and_only_yes_records_it(tmp_path):
    out = tmp_path / "session"
    term = Tmux(tmp_path)
    unsure = "the blue bowl is where it should go"  # the intent model is about 54% sure it is an override
    asked = re.escape("did you mean: place it in the blue bowl now? (y / n / rephrase)")
    _start_coach(term, tmp_path, out, "--history-file none --episodes 1")
    try:
        # The robot waits at the first frame (nothing steps, so the episode cannot run out while we
        # talk); what is confirmed now is applied when it starts.
        term.wait_for(r"waiting: press Enter", timeout=120)
        term.wait_for(r"intent model loaded", timeout=120)
        term.type(unsure)
        term.wait_for(asked)
        term.type("n")
        term.wait_for(r"nothing recorded: say it another way")
        term.type("what do you see?")  # the oracle has no answer method: one line says so
        term.wait_for(r"the high level \(OraclePlanner\) does not answer questions")
        term.type(unsure)
        term.wait_for(asked + r"[\s\S]*" + asked)
        term.type("y")
        term.wait_for(r"ok: override → place it in the blue bowl")
        term.type("")  # Enter: the robot starts and the confirmed correction lands
        term.wait_for(r"\[override\] the blue bowl is where it should go")
        term.type("/quit")
        term.wait_for(r"HIVLA-EXIT=0", timeout=60)
    finally:
        term.kill()
    corrections = read_session(out).episodes[0].corrections
    assert [(c.kind, c.text) for c in corrections] == [(CorrectionKind.OVERRIDE, unsure)]


def test_coach_without_a_terminal_exits_with_a_clear_message():
    done = subprocess.run([sys.executable, "-m", "agent.cli", "coach"], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2 and "needs a terminal" in done.stderr


def test_ask_is_answered_by_the_shipped_planner_and_recorded(tmp_path):
    """`/ask` on a terminal: the planner co-trained on scene questions (policies/checkpoints/planner)
    answers from the current frames; the answer is recorded as a question event, not a correction."""
    out = tmp_path / "session"
    term = Tmux(tmp_path)
    _start_coach(term, tmp_path, out, "--history-file none --episodes 1 "
                                      f"--high-level pi05:{REPO / 'policies' / 'checkpoints' / 'planner'}")
    try:
        term.wait_for(r"waiting: press Enter", timeout=120)
        term.type("/ask what is in the drawer?")
        answer = term.wait_for(r"A: (\S[^\n]*\S)").group(1).strip()
        term.type("/quit")
        term.wait_for(r"HIVLA-EXIT=0", timeout=60)
    finally:
        term.kill()
    episode = read_session(out).episodes[0]
    assert [(q.question, q.answer) for q in episode.questions] == [("what is in the drawer?", answer)]
    assert episode.corrections == []
