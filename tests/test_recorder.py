"""Session recorder: layout, round trip through the reader, misuse errors, queue behaviour."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from policies.types import CorrectionKind
from sessions.reader import read_session
from sessions.recorder import RecorderError, SessionRecorder, default_session_dir, make_header
from sessions.schema import CorrectionRecord, EpisodeEnd, EpisodeStart, PlanData, PlanEmitted, Step
from sessions.synthetic import synthetic_image, write_synthetic_session


def _header(size: int = 16):
    return make_header(
        high_level="oracle",
        low_level="expert",
        cameras={"front": (size, size), "wrist": (size, size)},
        state_names=["a", "b"],
        action_names=["dx", "grip"],
    )


def _step(episode: int, k: int) -> Step:
    return Step(episode=episode, step=k, frame=k, time=k / 10, wall_time=time.time(), state=[k, -k], action=[0.5, 1.0], plan_id=0, subtask="pick up the red block")


def _images(k: int, size: int = 16) -> dict[str, np.ndarray]:
    return {cam: synthetic_image(0, 0, k, cam, size) for cam in ("front", "wrist")}


def test_round_trip_of_every_record_kind(tmp_path):
    path = write_synthetic_session(tmp_path / "s", episodes=2, steps=25, image_size=24, seed=3)
    assert json.loads((path / "session.json").read_text())["format"] == "hivla-session"
    session = read_session(path)
    assert session.warnings == []
    assert [ep.episode for ep in session.episodes] == [0, 1]
    for ep in session.episodes:
        assert [s.step for s in ep.steps] == list(range(25))
        assert ep.end is not None and ep.end.steps == 25
        assert ep.plans[0].reason == "start"
        assert {p.reason for p in ep.plans} >= {"start", "subtask_done"}
        front = ep.frames("front")
        assert front.shape == (25, 24, 24, 3) and front.dtype == np.uint8
        for i in (0, 7, 24):
            np.testing.assert_array_equal(front[i], synthetic_image(3, ep.episode, i, "front", 24))
            np.testing.assert_array_equal(ep.frame("wrist", i), synthetic_image(3, ep.episode, i, "wrist", 24))
    # the synthetic session withdraws the last correction of episode 0
    first = session.episodes[0].corrections
    assert first[-1].withdrawn and not any(c.withdrawn for c in first[:-1])
    assert all(isinstance(c.kind, CorrectionKind) for c in first)


def test_refuses_a_non_empty_directory_and_accepts_an_empty_one(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("keep me")
    with pytest.raises(RecorderError, match="not empty"):
        SessionRecorder(tmp_path / "busy", _header())
    assert (tmp_path / "busy" / "x.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    with SessionRecorder(tmp_path / "empty", _header()) as rec:
        rec.start_episode(EpisodeStart(episode=0, task="t", wall_time=0.0))
    assert read_session(tmp_path / "empty").episodes[0].steps == []


def test_close_is_idempotent_and_recording_after_close_fails(tmp_path):
    rec = SessionRecorder(tmp_path / "s", _header())
    rec.start_episode(EpisodeStart(episode=0, task="t", wall_time=0.0))
    rec.record_step(_step(0, 0), _images(0))
    rec.close()
    rec.close()
    assert rec.closed
    with pytest.raises(RecorderError, match="closed"):
        rec.record_step(_step(0, 1), _images(1))
    assert len(read_session(tmp_path / "s").episodes[0].steps) == 1


def test_misuse_gets_clear_errors(tmp_path):
    with SessionRecorder(tmp_path / "s", _header()) as rec:
        with pytest.raises(RecorderError, match="start_episode"):
            rec.record_step(_step(0, 0), _images(0))
        rec.start_episode(EpisodeStart(episode=0, task="t", wall_time=0.0))
        with pytest.raises(RecorderError, match="cameras"):
            rec.record_step(_step(0, 0), {"front": _images(0)["front"]})
        with pytest.raises(RecorderError, match="uint8"):
            rec.record_step(_step(0, 0), {"front": np.zeros((16, 16, 3), np.float32), "wrist": _images(0)["wrist"]})
        with pytest.raises(TypeError, match="record_step"):
            rec.record(_step(0, 0))


def test_images_are_copied_at_call_time(tmp_path):
    buffer = _images(0)
    with SessionRecorder(tmp_path / "s", _header()) as rec:
        rec.start_episode(EpisodeStart(episode=0, task="t", wall_time=0.0))
        rec.record_step(_step(0, 0), buffer)
        for img in buffer.values():
            img[:] = 0  # the caller reuses its buffer right away
    np.testing.assert_array_equal(read_session(tmp_path / "s").episodes[0].frame("front", 0), _images(0)["front"])


def test_flush_makes_data_readable_while_recording(tmp_path):
    with SessionRecorder(tmp_path / "s", _header()) as rec:
        rec.start_episode(EpisodeStart(episode=0, task="t", wall_time=0.0))
        plan = PlanData(thought="the red block is on the table", subtask="pick up the red block", source="model")
        rec.record(PlanEmitted(episode=0, step=0, plan_id=0, plan=plan, reason="start", wall_time=0.0))
        for k in range(5):
            rec.record_step(_step(0, k), _images(k))
        rec.record(CorrectionRecord(episode=0, step=4, correction_id=0, kind=CorrectionKind.NUDGE, text="lower", wall_time=0.0))
        rec.flush(timeout=10)
        live = read_session(tmp_path / "s")
        assert len(live.episodes[0].steps) == 5 and live.episodes[0].corrections[0].text == "lower"
        assert live.episodes[0].end is None
        rec.record(EpisodeEnd(episode=0, steps=5, success=True, subtasks_completed=1, subtasks_total=1, reason="success", wall_time=0.0))
    assert read_session(tmp_path / "s").episodes[0].end.success


def test_periodic_sync_without_flush(tmp_path):
    """Idle writer: data reaches the files within the sync interval without any explicit flush."""
    rec = SessionRecorder(tmp_path / "s", _header(), sync_interval_s=0.1)
    try:
        rec.start_episode(EpisodeStart(episode=0, task="t", wall_time=0.0))
        rec.record_step(_step(0, 0), _images(0))
        # Poll what a reader sees: on a loaded machine the writer may sync the episode start before the
        # step reaches its queue, so "one sync happened" alone does not mean the step is on disk yet.
        deadline = time.time() + 5
        steps_read = 0
        while time.time() < deadline and (rec.stats.syncs < 1 or steps_read < 1):
            episodes = read_session(tmp_path / "s").episodes
            steps_read = len(episodes[0].steps) if episodes else 0
            time.sleep(0.02)
        assert rec.stats.syncs >= 1
        assert steps_read == 1
    finally:
        rec.close()


def test_full_queue_blocks_instead_of_dropping(tmp_path):
    with SessionRecorder(tmp_path / "s", _header(), max_pending=2) as rec:
        rec.start_episode(EpisodeStart(episode=0, task="t", wall_time=0.0))
        for k in range(200):
            rec.record_step(_step(0, k), _images(k))
        assert rec.stats.max_backlog <= 2
    assert [s.step for s in read_session(tmp_path / "s").episodes[0].steps] == list(range(200))


def test_writer_failure_surfaces_to_the_caller(tmp_path):
    rec = SessionRecorder(tmp_path / "s", _header())
    rec.start_episode(EpisodeStart(episode=0, task="t", wall_time=0.0))
    rec.flush(timeout=10)
    rec._events.close()  # simulate the disk going away under the writer
    with pytest.raises(RecorderError, match="writer .* failed"):
        # the failure surfaces at the next call after the writer hits it, at the latest at close()
        rec.record(EpisodeEnd(episode=0, steps=0, success=False, subtasks_completed=0, subtasks_total=1, reason="quit", wall_time=0.0))
        rec.close()
    rec.close()  # still safe to call again


def test_record_step_is_cheap(tmp_path):
    """The caller pays for a copy and an enqueue only (generous bound: shared, noisy CPUs)."""
    size = 128
    images = {cam: synthetic_image(0, 0, 0, cam, size) for cam in ("front", "wrist")}
    with SessionRecorder(tmp_path / "s", _header(size)) as rec:
        rec.start_episode(EpisodeStart(episode=0, task="t", wall_time=0.0))
        costs = []
        for k in range(50):
            step = _step(0, k)
            t0 = time.perf_counter()
            rec.record_step(step, images)
            costs.append(time.perf_counter() - t0)
            time.sleep(0.002)
    assert float(np.median(costs)) < 2e-3


def test_default_session_dir_is_fresh_and_under_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("HIVLA_RUNS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    first = default_session_dir("coach")
    assert first.parent.name == "runs" and first.name.startswith("coach-")
    first.mkdir(parents=True)
    second = default_session_dir("coach")
    assert second != first and not second.exists()
    monkeypatch.setenv("HIVLA_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert default_session_dir("run").parent == tmp_path / "elsewhere"
