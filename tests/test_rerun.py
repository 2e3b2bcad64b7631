"""Sessions for the rerun viewer: `hivla replay --rerun` and `hivla coach --rerun` write .rrd files
that rerun's own reader (rerun.chunk.RrdReader, or rr.dataframe in older rerun-sdk) opens, with
both cameras, the state, the plans, the corrections and the detectors' events; without rerun-sdk
the command says in one line how to install it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from agent.cli import main as hivla
from sessions.reader import read_session
from sessions.synthetic import write_synthetic_session

rr = pytest.importorskip("rerun", reason="rerun-sdk is not installed (pip install -e '.[viz]')")
REPO = Path(__file__).resolve().parents[1]
EXPECTED = {"/cameras/front", "/cameras/wrist", "/state", "/action", "/plan", "/corrections", "/detectors",
            "/detectors/subtask_index", "/episode", "/session"}


def rows_per_entity(path: Path) -> Counter:
    """Temporal rows per entity path, read with rerun's own Python reader."""
    try:
        from rerun.chunk import RrdReader  # rerun-sdk >= 0.3x
    except ImportError:  # older rerun-sdk: the dataframe API
        recording = rr.dataframe.load_recording(str(path))
        counts = Counter()
        for column in recording.schema().component_columns():
            table = recording.view(index="frame", contents=column.entity_path).select().read_all()
            counts[column.entity_path] = max(counts[column.entity_path], table.num_rows)
        return counts
    counts: Counter = Counter()
    for chunk in RrdReader(path).store().stream():
        if not chunk.is_static:
            counts[chunk.entity_path] += chunk.num_rows
    return counts


def entity_paths(path: Path) -> set[str]:
    try:
        from rerun.chunk import RrdReader
    except ImportError:
        return {c.entity_path for c in rr.dataframe.load_recording(str(path)).schema().component_columns()}
    return set(RrdReader(path).store().schema().entity_paths())


def test_replay_to_rrd_holds_cameras_state_plans_corrections_and_detectors(tmp_path, capsys):
    session_dir = write_synthetic_session(tmp_path / "s", episodes=2, steps=15, image_size=16, seed=3)
    out = tmp_path / "replay.rrd"
    assert hivla(["replay", str(session_dir), "--rerun", str(out)]) == 0
    session = read_session(session_dir)
    frames = session.num_steps
    assert f"wrote {out} ({frames} frames" in capsys.readouterr().out

    assert EXPECTED <= entity_paths(out)
    rows = rows_per_entity(out)
    for entity in ("/cameras/front", "/cameras/wrist", "/state", "/action"):
        assert rows[entity] == frames, entity  # one row per recorded step, episodes one after another
    assert rows["/plan"] == sum(len(ep.plans) for ep in session.episodes)
    assert rows["/corrections"] == sum(len(ep.corrections) for ep in session.episodes)
    assert rows["/episode"] == len(session.episodes)
    assert rows["/detectors"] >= sum(ep.end is not None for ep in session.episodes)  # each outcome at least

    # refuses to overwrite without --force, like --video
    assert hivla(["replay", str(session_dir), "--rerun", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err


def test_live_coach_logs_the_same_entities(tmp_path):
    out, rrd = tmp_path / "session", tmp_path / "live.rrd"
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "HIVLA_RUNS_DIR": str(tmp_path / "runs")}
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "coach", "--family", "put_color_in_bowl", "--high-level", "oracle",
         "--low-level", "expert", "--image-size", "32", "--out", str(out), "--rerun", str(rrd), "--steps", "25"],
        input="@5 no, the blue one first\n@12 /undo\n", capture_output=True, text=True, timeout=150, cwd=REPO, env=env,
    )
    assert done.returncode == 0, done.stderr
    assert EXPECTED <= entity_paths(rrd)
    rows = rows_per_entity(rrd)
    steps = read_session(out).num_steps
    assert rows["/cameras/front"] == rows["/cameras/wrist"] == rows["/state"] == steps == 25
    assert rows["/corrections"] == 2  # the correction, then its withdrawal


def test_without_rerun_sdk_the_error_is_one_line_naming_the_install(tmp_path, monkeypatch, capsys):
    session_dir = write_synthetic_session(tmp_path / "s", episodes=1, steps=3, image_size=16)
    monkeypatch.setitem(sys.modules, "rerun", None)  # `import rerun` now raises ImportError
    assert hivla(["replay", str(session_dir), "--rerun", str(tmp_path / "x.rrd")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "hivla replay: rerun-sdk is not installed; install it with pip install -e '.[viz]'"
    assert not (tmp_path / "x.rrd").exists()
