"""Shared fixtures."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def session(clean_session, tmp_path):
    """A fresh copy of the test module's `clean_session` (a fixture it defines), for a test that damages it."""
    return shutil.copytree(clean_session, tmp_path / "copy")


@pytest.fixture(scope="session")
def random_vla_checkpoint(tmp_path_factory):
    """An untrained tiny VLA checkpoint: enough wherever the test is about plumbing (serving, specs),
    not about what the policy learned."""
    from random_vla import make_random_vla

    return make_random_vla(tmp_path_factory.mktemp("random_vla"),
                           ["pick up the red block", "open the drawer", "place it in the blue bowl"])


@pytest.fixture
def sigterm_at_step(monkeypatch):
    """sigterm_at_step(n, run, out): call `run`, which trains into `out`, and send it a real SIGTERM right after
    its step n, as `kill PID` does; it must stop with KeyboardInterrupt. Returns out's trainer_state.json."""
    import json
    import os
    import signal

    from agent.training import loop

    def interrupt(at: int, run, out) -> dict:
        real = loop.TrainProgress.update

        def update(self, step: int, info: dict) -> None:
            real(self, step, info)
            if step == at:
                os.kill(os.getpid(), signal.SIGTERM)

        monkeypatch.setattr(loop.TrainProgress, "update", update)
        with pytest.raises(KeyboardInterrupt):
            run()
        monkeypatch.setattr(loop.TrainProgress, "update", real)
        return json.loads((out / loop.TRAINER_STATE).read_text())

    return interrupt
