"""The prompt-toolkit console driven headless: keystrokes through a pipe input, output to a
DummyOutput, the control loop on its real-time thread and a real session recorder.

This covers what test_coach_tmux.py does on a terminal, without one: typed corrections, slash
commands with Tab completion, /pause flagging the recorded steps, /quit and Ctrl-C saving.
"""

from __future__ import annotations

import threading
import time

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from agent.console.session import CoachSession
from policies.types import CorrectionKind
from sessions.reader import read_session
from sessions.recorder import SessionRecorder, make_header
from test_console import make_loop

pytestmark = pytest.mark.timeout(60)


def _session(tmp_path) -> CoachSession:
    header = make_header(high_level="stand-in", low_level="stand-in", cameras={"front": (16, 16), "wrist": (16, 16)},
                         state_names=["x"], action_names=["dx", "dy", "dz", "dyaw", "grip"])
    recorder = SessionRecorder(tmp_path / "session", header)
    loop = make_loop(recorder=recorder, horizon=10_000)
    return CoachSession(loop, recorder, {"high_level": "stand-in", "low_level": "stand-in"}, camera_width=16)


def _type(pipe, keys: list[tuple[float, str]]) -> threading.Thread:
    """Send each key string after its delay (seconds), from a thread, as a person would."""

    def send() -> None:
        for delay, text in keys:
            time.sleep(delay)
            pipe.send_text(text)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_console_correction_pause_and_quit_are_recorded(tmp_path, capsys):
    session = _session(tmp_path)
    with create_pipe_input() as pipe:
        typist = _type(pipe, [
            (0.6, "no, the green one first\r"),
            (0.6, "/pa"),
            (0.3, "\t"),  # Tab completes /pause
            (0.3, "\r"),
            (0.8, "/frobnicate\r"),
            (0.3, "/quit\r"),
        ])
        status = session.run_interactive(history_file=str(tmp_path / "history.txt"), input=pipe, output=DummyOutput())
        typist.join()
    summary = session.close()
    assert status == 0
    out = capsys.readouterr().out
    assert "stopped (/quit)" in out and f"session saved to {tmp_path / 'session'}" in out

    messages = list(session.controller.messages)
    assert "› no, the green one first" in messages and "› /pause" in messages
    assert any("unknown command /frobnicate" in m for m in messages)
    assert (tmp_path / "history.txt").read_text().count("/pause") == 1  # the file history got the line

    episode = read_session(tmp_path / "session").episodes[0]
    (correction,) = episode.corrections
    assert correction.kind is CorrectionKind.OVERRIDE and correction.resulting_plan.subtask == "pick up the green block"
    assert correction.resulting_plan.source == "human"
    paused = [s.paused for s in episode.steps]
    assert len(paused) >= 10 and any(paused) and not paused[0]
    assert paused[-1]  # still paused when /quit came
    assert episode.end is not None and episode.end.reason == "quit"
    assert summary.corrections == 1 and summary.paused_steps == sum(paused)


def test_ctrl_c_saves_the_session(tmp_path, capsys):
    session = _session(tmp_path)
    with create_pipe_input() as pipe:
        typist = _type(pipe, [(0.5, "leave the red block alone\r"), (0.4, "\x03")])
        status = session.run_interactive(history_file="none", input=pipe, output=DummyOutput())
        typist.join()
    summary = session.close()
    assert status == 0 and "stopped (Ctrl-C)" in capsys.readouterr().out
    episode = read_session(tmp_path / "session").episodes[0]
    assert [c.kind for c in episode.corrections] == [CorrectionKind.CONSTRAINT]
    assert episode.end.reason == "quit" and summary.steps == len(episode.steps) > 0


def test_a_failing_policy_is_reported_and_the_session_still_saved(tmp_path, capsys):
    from test_console import GoToMark

    class BreaksAfterAFewChunks(GoToMark):
        calls = 0

        def act(self, obs, subtask):
            self.calls += 1
            if self.calls > 2:
                raise RuntimeError("policy server went away")
            return super().act(obs, subtask)

    session = _session(tmp_path)
    session.loop.low = BreaksAfterAFewChunks()
    with create_pipe_input() as pipe:
        typist = _type(pipe, [(1.5, "/quit\r")])
        status = session.run_interactive(history_file="none", input=pipe, output=DummyOutput())
        typist.join()
    summary = session.close()
    assert status == 1
    assert "control loop failed: RuntimeError: policy server went away" in capsys.readouterr().err
    assert any("control loop stopped" in m for m in session.controller.messages)
    assert summary.steps == 8  # two chunks of four actions were executed and recorded before the failure
