"""A coaching session is several episodes, and a correction shows what it changed.

On the stand-in world of test_console (no MuJoCo): the sequencer's summary line and pause, the
next episode from the same family in a fresh scene, a correction typed after the end answered
"nothing recorded" (and not recorded), the session summary listing every episode read back from
disk, and the view's old -> new subtask, "said here" mark and withdrawn correction.
"""

from __future__ import annotations

from agent.console.app import PLAN_CHANGE_SHOW_S, StatusTracker
from agent.console.controller import CoachController
from agent.console.episodes import EpisodeSequencer
from agent.console.script import parse_script, run_script
from agent.console.session import summarize_session
from agent.console.view import render_plain
from sessions.reader import read_session
from sessions.recorder import SessionRecorder, make_header
from test_console import make_loop


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _recorded_loop(tmp_path):
    header = make_header(high_level="stand-in", low_level="stand-in", cameras={"front": (16, 16), "wrist": (16, 16)},
                         state_names=["x"], action_names=["dx", "dy", "dz", "dyaw", "grip"])
    recorder = SessionRecorder(tmp_path / "session", header)
    return make_loop(recorder=recorder), recorder


def _run_to_end(loop, limit: int = 200) -> None:
    for _ in range(limit):
        if loop.snapshot().episode_over:
            return
        loop.step()
    raise AssertionError("the stand-in episode did not end")


def test_after_an_episode_the_summary_then_the_next_after_the_pause():
    loop = make_loop()
    said, started, clock = [], [], Clock()
    def start_next(seed, options):
        started.append((seed, options))
        loop.reset(seed=seed, options=options)

    seq = EpisodeSequencer(start_next, episodes=2, pause_s=5.0, seed=0, family="line", say=said.append, clock=clock)
    loop.submit("no, the green one first")
    _run_to_end(loop)
    seq.observe(loop.snapshot())
    assert said == [f"episode 0 success: 3/3 subtasks, 1 correction, {loop.snapshot().step} steps; "
                    "the next episode starts in 5 s (Enter: now)"]
    clock.now += 4.9
    seq.observe(loop.snapshot())
    assert started == [] and seq.pausing  # the ended episode stays on screen for the pause
    clock.now += 0.2
    seq.observe(loop.snapshot())
    assert started == [(1, {"family": "line"})]  # the same family, the next seed
    assert loop.snapshot().episode == 1 and not loop.snapshot().episode_over
    _run_to_end(loop)
    seq.observe(loop.snapshot())
    assert seq.finished and "all 2 episodes done" in said[-1] and not seq.pausing
    assert [s.episode for s in seq.summaries] == [0, 1]


def test_enter_skips_the_pause_and_a_late_correction_is_not_applied(tmp_path):
    loop, recorder = _recorded_loop(tmp_path)
    clock = Clock()
    ctl = CoachController(loop, recorder)
    ctl.sequencer = EpisodeSequencer(lambda seed, options: loop.reset(seed=seed, options=options), episodes=None,
                                     pause_s=5.0, seed=0, say=ctl.say, clock=clock)
    _run_to_end(loop)
    ended_at = loop.snapshot().step
    ctl.sequencer.observe(loop.snapshot())
    reply = ctl.handle("no, the blue one first").reply  # typed after the end, about the ended episode
    assert reply == (f"the episode succeeded at step {ended_at}: nothing recorded; "
                     "the next episode starts in 5 s (Enter: now)")
    loop.step()  # the loop keeps ticking over the ended episode; nothing is applied
    assert loop.snapshot().episode == 0 and loop.snapshot().corrections_given == 0
    assert ctl.handle("").reply == "starting the next episode"  # Enter
    loop.step()
    assert loop.snapshot().episode == 1 and loop.snapshot().corrections == ()
    loop.close()
    recorder.close()
    session = read_session(tmp_path / "session")
    assert [len(ep.corrections) for ep in session.episodes] == [0, 0]


def test_headless_episodes_follow_on_and_the_saved_summary_lists_each(tmp_path):
    loop, recorder = _recorded_loop(tmp_path)
    said: list[str] = []
    ctl = CoachController(loop, recorder)
    ctl.sequencer = EpisodeSequencer(lambda seed, options: loop.reset(seed=seed, options=options), episodes=3,
                                     pause_s=0.0, seed=0, say=said.append)
    script = parse_script(["@3 no, the green one first", "@40 a bit left"])
    assert run_script(loop, ctl, script, echo=said.append) == "episode over"
    loop.close()
    recorder.close()
    assert sum(line.startswith("episode ") and "success" in line for line in said) == 3
    summary = summarize_session(tmp_path / "session")
    assert summary.episodes == 3 and len(summary.episode_lines) == 3
    text = summary.text().splitlines()
    assert text[0] == summary.line()
    assert text[1].startswith("  episode 0 success: 3/3 subtasks, 1 correction,")
    assert text[2].startswith("  episode 1 success: 3/3 subtasks, 1 correction,")  # "a bit left" at @40
    assert text[3].startswith("  episode 2 success: 3/3 subtasks, 0 corrections,")


def test_a_correction_that_changes_the_plan_shows_old_to_new_and_where_it_was_said():
    loop = make_loop()
    ctl = CoachController(loop)
    tracker = StatusTracker(ctl, {"high_level": "oracle", "low_level": "expert"})
    for _ in range(3):
        loop.step()
    before = loop.snapshot().plan.subtask
    ctl.handle("no, the green one first")
    loop.step()
    change = loop.snapshot().plan_change
    assert (change.old, change.new, change.step, change.withdrawn) == (before, "pick up the green block", 3, False)
    assert change.reference_index == 0  # the robot was on the first reference subtask when it was said
    view = render_plain(tracker.status(loop.snapshot()), width=140)
    assert f'↻ [override] "no, the green one first"  {before}  →  pick up the green block' in view
    assert "said at step 3" in view and "✎ said here, step 3" in view

    ctl.handle("/undo")
    loop.step()
    change = loop.snapshot().plan_change
    assert change.withdrawn and change.old == "pick up the green block" and change.new == before
    view = render_plain(tracker.status(loop.snapshot()), width=140)
    assert '↶ withdrawn [override] "no, the green one first"' in view and f"plan back to: {before}" in view
    assert "(withdrawn)" in view  # still listed among the corrections, struck through
    assert any(m.startswith("withdrew: [override] no, the green one first (said at step 3); plan now:")
               for m in ctl.messages)


def test_the_plan_change_fades_after_a_few_seconds(monkeypatch):
    loop = make_loop()
    ctl = CoachController(loop)
    tracker = StatusTracker(ctl, {})
    ctl.handle("no, the green one first")
    loop.step()
    at = loop.snapshot().plan_change.at
    import agent.console.app as app

    monkeypatch.setattr(app.time, "monotonic", lambda: at + PLAN_CHANGE_SHOW_S + 0.1)
    assert tracker.status(loop.snapshot()).plan_change is None
    monkeypatch.setattr(app.time, "monotonic", lambda: at + 1.0)
    assert tracker.status(loop.snapshot()).plan_change is not None


def test_a_correction_that_keeps_the_plan_shows_no_change():
    loop = make_loop()
    CoachController(loop).handle("a bit left")
    loop.step()
    assert loop.snapshot().plan_change is None and loop.snapshot().corrections_given == 1
