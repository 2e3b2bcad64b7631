"""A planner and the scripted expert on the real simulator, recording a session: the set-up that the
question, fact and memory tests share."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from agent.envs.expert import ScriptedExpert
from agent.loop import ControlLoop
from sessions.recorder import SessionRecorder, make_header


@contextmanager
def recorded_loop(path: Path, env, high, seed: int = 0) -> Iterator[ControlLoop]:
    """A ControlLoop of `high` and ScriptedExpert over `env`, recording to `path` under an oracle + expert
    header sized from the env's first observation (reset with `seed`); the test resets it. Closed at the end."""
    obs, _ = env.reset(seed=seed)
    header = make_header(high_level="oracle", low_level="expert", cameras={k: v.shape[:2] for k, v in obs["images"].items()},
                         state_names=[f"s{i}" for i in range(len(obs["state"]))], action_names=["dx", "dy", "dz", "dyaw", "grip"])
    with SessionRecorder(path, header) as rec:
        loop = ControlLoop(env, high, ScriptedExpert(seed=0), recorder=rec)
        yield loop
        loop.close()
