"""The bundled simulator: a MuJoCo tabletop with blocks, bowls and a drawer, a long-horizon task
suite, success detectors, a scripted expert and an oracle planner.

    from agent.envs import make_env, FAMILIES, SUITES
    env = make_env(family="stack_three", image_size=128)
    obs, info = env.reset(seed=0)            # or options={"family": ...} / {"task": "free text"}
    obs, reward, terminated, truncated, info = env.step(action)   # action float32[5]
"""

from agent.envs.tasks import FAMILIES, SUITES, register_family  # noqa: F401
from agent.envs import coaching_tasks  # noqa: E402,F401  (registers the `coaching` suite)


def make_env(*args, **kwargs):
    """See `agent.envs.tabletop.make_env` (imported lazily: mujoco is heavy)."""
    from agent.envs.tabletop import make_env as _make_env

    return coaching_tasks.with_coaching_events(_make_env(*args, **kwargs))  # coaching suite: scripted slips


__all__ = ["make_env", "FAMILIES", "SUITES", "register_family"]
