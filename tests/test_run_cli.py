"""`hivla run`: the JSON metrics of a tiny run, and clear errors for bad flags."""

from __future__ import annotations

import json

import pytest

from agent.cli import main


def test_tiny_run_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    code = main(["run", "--high-level", "oracle", "--low-level", "expert", "--family", "push_to_side",
                 "--episodes", "1", "--seed", "3", "--image-size", "32", "--json", str(out), "--quiet"])
    assert code == 0
    data = json.loads(out.read_text())
    for key in ("episodes", "success_rate", "mean_subtasks_completed", "interventions_per_episode", "per_family"):
        assert key in data
    assert data["episodes"] == 1 and data["success_rate"] == 1.0
    family = data["per_family"]["push_to_side"]
    assert family["episodes"] == 1 and family["mean_subtasks_completed"] == 2
    assert data["episodes_detail"][0]["seed"] == 3
    assert "push_to_side" in capsys.readouterr().out  # the per-family table


def test_a_timeout_names_the_subtask_it_was_stuck_on(tmp_path):
    out = tmp_path / "metrics.json"
    code = main(["run", "--high-level", "oracle", "--low-level", "expert", "--family", "stack_three",
                 "--episodes", "1", "--seed", "3", "--image-size", "32", "--max-steps", "12", "--json", str(out),
                 "--quiet"])
    assert code == 0
    data = json.loads(out.read_text())
    detail = data["episodes_detail"][0]
    assert not detail["success"] and detail["reason"] == "timeout"
    assert detail["last_subtask"].startswith("pick up the")  # 12 steps end inside the first pick
    assert data["failed_on"] == {detail["last_subtask"]: 1} == data["per_family"]["stack_three"]["failed_on"]


def test_records_sessions_when_asked(tmp_path):
    from sessions.reader import read_session

    code = main(["run", "--high-level", "oracle", "--low-level", "expert", "--family", "stack_three",
                 "--episodes", "1", "--image-size", "32", "--out", str(tmp_path / "sessions"), "--quiet"])
    assert code == 0
    [session_dir] = list((tmp_path / "sessions").iterdir())
    session = read_session(session_dir)
    [episode] = session.episodes
    assert episode.end is not None and episode.end.success
    assert episode.plans and episode.plans[0].plan.source == "oracle"
    assert episode.frames("front").shape[1:] == (32, 32, 3)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--family", "juggle"], "valid families"),
        (["--suite", "nope"], "valid suites"),
        (["--episodes", "0"], "at least 1"),
    ],
)
def test_bad_flags_exit_with_a_clear_message(argv, message, capsys):
    assert main(["run", "--high-level", "oracle", "--low-level", "expert", "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("hivla run: ") and "Traceback" not in err
