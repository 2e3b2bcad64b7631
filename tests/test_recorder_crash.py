"""kill -9 at random instants: the session must read back, and every step recorded more than one
second before the kill must be there with its images, plans and corrections intact."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sessions.reader import read_session
from sessions.synthetic import synthetic_image

IMAGE_SIZE = 64
STEPS_PER_EPISODE = 25
ROOT = Path(__file__).resolve().parents[1]

# The child records steadily at 10 Hz, 64-px images, a plan every 8 steps, a correction every
# 5, and prints "<episode> <step> <time>" after each record_step returns.
CHILD = textwrap.dedent(
    f"""
    import sys, time
    from policies.types import CorrectionKind
    from sessions.recorder import SessionRecorder, make_header
    from sessions.schema import CorrectionRecord, EpisodeEnd, EpisodeStart, PlanData, PlanEmitted, Step
    from sessions.synthetic import synthetic_image

    size, per_episode = {IMAGE_SIZE}, {STEPS_PER_EPISODE}
    header = make_header(high_level="oracle", low_level="expert", cameras={{"front": (size, size), "wrist": (size, size)}},
                         state_names=["x", "y"], action_names=["dx", "grip"])
    rec = SessionRecorder(sys.argv[1], header)
    print("ready", flush=True)
    episode, t_next = 0, time.monotonic()
    while True:
        rec.start_episode(EpisodeStart(episode=episode, task=f"task {{episode}}", wall_time=time.time()))
        for k in range(per_episode):
            if k % 8 == 0:
                plan = PlanData(thought=f"thought {{episode}}/{{k}}", subtask=f"subtask {{episode}}/{{k}}", source="model")
                rec.record(PlanEmitted(episode=episode, step=k, plan_id=k // 8, plan=plan, reason="timer", wall_time=time.time()))
            if k % 5 == 4:
                rec.record(CorrectionRecord(episode=episode, step=k, correction_id=k, kind=CorrectionKind.NUDGE,
                                            text=f"nudge {{episode}}/{{k}}", wall_time=time.time()))
            images = {{cam: synthetic_image(7, episode, k, cam, size) for cam in ("front", "wrist")}}
            rec.record_step(Step(episode=episode, step=k, frame=k, time=k / 10, wall_time=time.time(), state=[k, episode],
                                 action=[0.1 * k, 1.0], plan_id=k // 8, subtask=f"subtask {{episode}}/{{k - k % 8}}"), images)
            print(episode, k, time.time(), flush=True)
            t_next += 0.1
            time.sleep(max(0.0, t_next - time.monotonic()))
        rec.record(EpisodeEnd(episode=episode, steps=per_episode, success=True, subtasks_completed=1, subtasks_total=1,
                              reason="success", wall_time=time.time()))
        episode += 1
    """
)


def _record_then_kill(session_dir: Path, delay_s: float) -> tuple[float, list[tuple[int, int, float]]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(session_dir)], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        for line in proc.stdout:
            if line.startswith("ready"):
                ready.set()
            else:
                lines.append(line)
        ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    assert ready.wait(60), "recording child did not start"
    time.sleep(delay_s)
    kill_time = time.time()
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    reader.join(10)
    recorded = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3:  # a line cut by the kill is not a complete record of a step
            recorded.append((int(parts[0]), int(parts[1]), float(parts[2])))
    return kill_time, recorded


def _check_after_kill(session_dir: Path, kill_time: float, recorded: list[tuple[int, int, float]]) -> int:
    session = read_session(session_dir)
    kept = {(ep.episode, s.step): (ep, i) for ep in session.episodes for i, s in enumerate(ep.steps)}
    must_survive = [(e, k) for e, k, t in recorded if t < kill_time - 1.0]
    for e, k in must_survive:
        assert (e, k) in kept, f"step {e}/{k} recorded >1 s before the kill is missing"
        ep, i = kept[(e, k)]
        step = ep.steps[i]
        assert step.state == [k, e] and step.action == pytest.approx([0.1 * k, 1.0])
        for cam in ("front", "wrist"):
            np.testing.assert_array_equal(ep.frame(cam, i), synthetic_image(7, e, k, cam, IMAGE_SIZE))
        if k % 5 == 4:
            assert f"nudge {e}/{k}" in [c.text for c in ep.corrections]
        if k % 8 == 0:
            assert f"subtask {e}/{k}" in [p.plan.subtask for p in ep.plans]
    for ep in session.episodes:  # whatever else survived is whole and in order
        assert [s.step for s in ep.steps] == list(range(len(ep.steps)))
        assert ep.frames("front").shape == (len(ep.steps), IMAGE_SIZE, IMAGE_SIZE, 3)
        if ep.end is not None:
            assert len(ep.steps) == STEPS_PER_EPISODE
    return len(must_survive)


def _kill_trials(tmp_path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    checked = 0
    for trial in range(n):
        delay = rng.uniform(0.2, 4.0)
        session_dir = tmp_path / f"kill{trial}"
        kill_time, recorded = _record_then_kill(session_dir, delay)
        checked += _check_after_kill(session_dir, kill_time, recorded)
    assert checked > 0  # the trials did exercise steps older than a second


def test_survives_three_kills(tmp_path):
    _kill_trials(tmp_path, 3, seed=1)


@pytest.mark.slow
def test_survives_twenty_random_kills(tmp_path):
    _kill_trials(tmp_path, 20, seed=int(time.time()))
