"""`hivla coach` on a real terminal shows the corrected belief (issue 33): tmux runs it with the shipped
grounded planner, a person types a fact about a block the "sees" row lists, the console echoes the
belief at once, and once the robot starts the "sees" row shows the fact in place of the read-out's
reading (the re-plan wrote it), and the session records the fact and the plan that read it."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time

import pytest

from policies.scene_line import SCENE_OPEN, Fact, parse_scene, split_scene
from policies.types import CorrectionKind
from sessions.reader import read_session
from test_coach_tmux import REPO, Tmux

GROUNDED = REPO / "policies" / "checkpoints" / "grounded"
pytestmark = [
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)"),
    pytest.mark.skipif(not (GROUNDED / "model.safetensors").is_file(), reason="no shipped grounded planner"),
    pytest.mark.timeout(180),
]


def sees_row(screen: str) -> str | None:
    """The "sees" row's text, its folded lines joined (the details column folds a long scene line)."""
    lines = screen.splitlines()
    for i, line in enumerate(lines):
        m = re.search(r" sees (\S.*)$", line)
        if m is None:
            continue
        col, parts = m.start(1), [m.group(1).strip()]
        for more in lines[i + 1:]:
            if more[col - 5: col - 1].strip() or not more[col:].strip():  # the next row's label, or nothing
                break
            parts.append(more[col:].strip())
        return " ".join(parts)
    return None


def wait_for_sees(term: Tmux, check, timeout: float = 90.0):
    """The scene the "sees" row shows, once `check(scene)` holds."""
    deadline, shown = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        shown = sees_row(term.screen())
        if shown:
            scene = parse_scene(SCENE_OPEN + shown)
            if check(scene):
                return scene
        time.sleep(0.2)
    raise AssertionError(f"the sees row never showed what was asked; last: {shown!r}; screen:\n{term.screen()}")


def test_a_typed_fact_shows_as_the_belief_the_robot_plans_from(tmp_path):
    out = tmp_path / "session"
    term = Tmux(tmp_path)
    command = (f"{sys.executable} -m agent.cli coach --family put_color_in_bowl --seed 0 --high-level pi05:{GROUNDED} "
               f"--low-level expert --image-size 64 --episodes 1 --history-file none --out {out}"
               "; echo HIVLA-EXIT=$?; sleep 600")
    term.start(command, {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "HIVLA_RUNS_DIR": str(tmp_path / "runs"),
                         "TERM": "xterm-256color"})
    try:
        term.wait_for(r"waiting: press Enter", timeout=120)
        term.wait_for(r"intent model loaded", timeout=120)
        read = wait_for_sees(term, lambda scene: bool(scene.blocks))
        block = read.blocks[0]
        # a fact against what the row shows: the block in the gripper, or (read as held) on the table at the left
        if block.place == "held":
            said, fact = f"no, the {block.name} is on the table at the left", Fact(block.name, "table", side="left")
        else:
            said, fact = f"the {block.name} is already in your gripper", Fact(block.name, "held")
        term.type(said)
        term.wait_for(re.escape(f"belief → {fact.phrase()}"))  # the console echoes the belief it will use
        term.type("")  # Enter: the robot starts, the fact lands and the planner re-plans from it
        term.wait_for(re.escape(f"belief: {fact.phrase()} (planning from it)"), timeout=60)
        shown = wait_for_sees(term, lambda scene: (b := scene.block(block.name)) is not None
                              and (b.place, b.side if fact.side else None) == (fact.place, fact.side))
        assert [b.name for b in shown.blocks if b.name != block.name] == \
            [b.name for b in read.blocks if b.name != block.name]  # the rest of the reading stands
        term.type("/quit")
        term.wait_for(r"HIVLA-EXIT=0", timeout=60)
    finally:
        term.kill()
    episode = read_session(out).episodes[0]
    [correction] = [c for c in episode.corrections if c.kind is CorrectionKind.FACT]
    assert correction.text == said and correction.fact.subject == block.name and correction.fact.place == fact.place
    # the plan it caused read the fact and wrote it into its scene line
    caused = next(p for p in episode.plans if p.reason == "correction")
    assert caused.context.facts[-1] == correction.fact
    line, _ = split_scene(caused.plan.thought)
    assert parse_scene(line).block(block.name).place == fact.place
