"""`hivla coach` as a command, without a terminal: headless lines piped on stdin on the real
simulator (oracle planner, scripted expert), and clear refusals of bad arguments."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from policies.types import CorrectionKind
from sessions.reader import read_session

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(180)
SIM = ["--family", "put_color_in_bowl", "--seed", "0", "--high-level", "oracle", "--low-level", "expert",
       "--image-size", "64"]


def coach(*args: str, stdin: str | None = None, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "HIVLA_RUNS_DIR": str(tmp_path / "runs")}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "coach", *args], input=stdin, capture_output=True, text=True,
        timeout=150, cwd=REPO, env=env, stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def test_piped_lines_run_headless_and_are_recorded(tmp_path):
    out = tmp_path / "session"
    script = "# said while the robot works\n@5 leave the blue block alone\n@10 /pause\n@20 /resume\n@22 /frobnicate\n"
    done = coach(*SIM, "--out", str(out), "--steps", "30", stdin=script, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "[step 5] › leave the blue block alone" in done.stdout
    assert "unknown command /frobnicate" in done.stdout
    assert f"session saved to {out} (1 episode, 30 steps of which 10 paused, 1 correction)" in done.stdout

    episode = read_session(out).episodes[0]
    (correction,) = episode.corrections
    assert correction.kind is CorrectionKind.CONSTRAINT and correction.step == 5
    assert [s.step for s in episode.steps if s.paused] == list(range(10, 20))
    assert episode.end.reason == "quit"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image-size", "4", "--script", "-"], "--image-size must be at least 16"),
        (["--high-level", "bogus", "--script", "-"], "cannot build the policies"),
        (["--script", "/nonexistent/script.txt"], "cannot read script"),
    ],
)
def test_bad_arguments_are_refused_clearly(tmp_path, args, message):
    done = coach(*args, stdin="", tmp_path=tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_existing_session_directory_is_never_overwritten(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "something.txt").write_text("keep me")
    done = coach(*SIM, "--out", str(out), "--steps", "2", stdin="", tmp_path=tmp_path)
    assert done.returncode == 2 and "cannot record to" in done.stderr
    assert (out / "something.txt").read_text() == "keep me"
