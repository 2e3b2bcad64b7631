"""Slow: the oracle + expert solve every base family through the real control loop."""

from __future__ import annotations

import pytest

from agent.envs import SUITES, make_env
from agent.envs.expert import ScriptedExpert
from agent.envs.oracle import OraclePlanner
from agent.loop import ControlLoop

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", SUITES["base"])
def test_oracle_and_expert_solve_the_family(family):
    env = make_env(family=family, image_size=32, render_images=False)
    loop = ControlLoop(env, OraclePlanner(seed=0), ScriptedExpert(noise_std=0.005, seed=0), compute_model_plan=False)
    results = [loop.run_episode(seed=seed, options={"family": family}) for seed in range(5)]
    env.close()
    assert sum(r.success for r in results) >= 4, [r.reason for r in results]
    assert all(r.subtasks_completed == r.subtasks_total for r in results if r.success)
