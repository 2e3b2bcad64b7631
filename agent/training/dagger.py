"""DAgger for the low-level VLA (`hivla datagen --mode dagger`): the learned policy acts, the scripted
expert labels every state it visits.

What is executed. The oracle plans; the low level is `DaggerLowLevel`: each time the control loop asks
for a chunk, with probability beta the expert's chunk from this state is executed, otherwise the
learned policy's. Either way only the part the learned policy executes at run time is handed to the
loop (`n_action_steps` of its `chunk_size`, 7 of 10 for the shipped VLA), so the loop asks again after
exactly as many steps as it does when the policy runs alone: the data is in the executed rhythm.
beta = 1 is the expert in that rhythm (no learned chunk runs); beta = 0 is the policy alone.

What is labelled. Every control step that executes a subtask is recorded with `Step.label` (session
schema 5): the chunk (`chunk_size` actions) the expert would execute if it were asked at that step's
state, whoever acted and wherever the step falls in a chunk. The expert is a closed-loop controller
that re-derives its phase from the world at every call, so it can be asked anywhere; a re-grasp after
a drop or a re-stack after a topple (the oracle plans the pick again) is labelled like any other
state. The label is a whole chunk, not one action, because the expert's chunk is only right when
enough of it runs: obeyed for 7 actions a call it completed 18 of 18 base episodes, obeyed for 1 it
completed 2 (it restarts its settle and close counts at every call; measured with the oracle, noise
off). A policy that learns the chunk and executes 7 of it is asked where the expert would be. The VLA
trainer (`hivla train --model vla`, agent.training.vla_data) learns a labelled episode's labels
instead of the actions executed next.

The expert used for labels is noise-free and is the one whose chunks run when beta picks it, so an
executed expert chunk is exactly the label of the step it starts at. What it remembers between calls
is read from the world (the block "it" is: the one held, or the one a pick names) or fixed at a
subtask's first step (a put-down spot), which is asked for at once in either case, so asking it at
every step changes nothing a rollout depends on (tests/test_dagger.py: beta = 1 reproduces the plain
expert asked every 7 steps, action for action).

Where the policy is weakest (push, stacks on stacks), record more: a second directory of the same
round with `--families push_to_side tower_of_n stack_three`, trained on beside the first.

On disk, a round's directory:

    dagger.json                      manifest: the settings every shard in it was recorded with
    dagger_0000123/                  one recorded session (sessions/), a shard of episodes from seed 123
    dagger_0000123.json              the shard's counts (episodes, successes, steps, chunks by actor)

A shard is recorded as `dagger_0000123.partial/` and renamed when whole, so a killed run resumes by
skipping the shards already there (a partial one is recorded again). Rounds aggregate by handing
`hivla train --model vla --data` several directories.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.errors import UserError
from agent.runtime import events as ev
from agent.runtime.protocols import LowLevel, Recorder
from agent.runtime.recording import RecordingObserver, step_record
from policies.pi05.processor import resize_images
from policies.types import TASK_DONE, Observation

MANIFEST = "dagger.json"
FORMAT_VERSION = 1
PARTIAL = ".partial"


class ExpertLabels:
    """The scripted expert's chunk from a state, remembered for the last (observation, subtask) asked:
    the loop hands the low level and then the recorder the same Observation object for a step, so a
    step's label is computed once and the expert chunk executed there is that label."""

    def __init__(self, horizon: int, seed: int = 0) -> None:
        from agent.envs.expert import ScriptedExpert

        # noise-free (the label is the expert's intent); not strict: a subtask it cannot do is no label
        self.expert = ScriptedExpert(horizon=horizon, noise_std=0.0, strict=False, seed=seed)
        self._asked: tuple[Observation, str] | None = None
        self._label: np.ndarray | None = None

    def reset(self) -> None:
        self.expert.reset()
        self._asked, self._label = None, None

    def chunk(self, obs: Observation, subtask: str) -> np.ndarray | None:
        """float32 [horizon, A], or None where the expert cannot act (no plan, "done", a subtask it cannot do)."""
        if self._asked is not None and self._asked[0] is obs and self._asked[1] == subtask:
            return self._label
        label = None
        if subtask and subtask != TASK_DONE:
            chunk = self.expert.act(obs, subtask)
            label = None if self.expert.last_error else chunk
        self._asked, self._label = (obs, subtask), label
        return label


@dataclass
class DaggerLowLevel:
    """LowLevelPolicy for DAgger collection: per chunk, the expert's (with probability `beta`) or the
    learned policy's; `execute` actions of an expert chunk are handed over, as many as the learned
    policy hands over of its own (the loop asks again when they are used up)."""

    learned: LowLevel
    labels: ExpertLabels
    beta: float
    execute: int
    chunks: dict[str, int] = field(default_factory=lambda: {"expert": 0, "policy": 0})
    starts: list[tuple[int, str]] = field(default_factory=list)  # (env step, who) of this episode's chunks

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        self._rng = np.random.default_rng(0)

    def begin_episode(self, seed: int) -> None:
        """Draw this episode's choices from its own seed (an episode reads the same in any shard)."""
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        self.learned.reset()
        self.labels.reset()
        self.starts = []

    def act(self, obs: Observation, subtask: str) -> np.ndarray:
        label = self.labels.chunk(obs, subtask)  # asked every chunk: the recorder reads it for this step
        who = "expert" if self._rng.random() < self.beta else "policy"
        self.chunks[who] += 1
        self.starts.append((int(obs.privileged.step), who))
        if who == "policy":
            return self.learned.act(obs, subtask)
        if label is None:  # the expert cannot do this subtask: it holds still, as it does under `hivla run`
            return self.labels.expert.act(obs, subtask)[: self.execute]
        return label[: self.execute]


class LabelledRecording:
    """A loop observer writing the session RecordingObserver writes, with each step's label (the
    expert's chunk at the state the step was taken from) and its frames stored at `image_size`."""

    def __init__(self, recorder: Recorder, labels: ExpertLabels, image_size: int) -> None:
        self.recorder = recorder
        self.labels = labels
        self.image_size = image_size
        self._others = RecordingObserver(recorder)
        self.steps = self.labelled = 0

    def on_event(self, event: ev.LoopEvent) -> None:
        if not isinstance(event, ev.StepTaken):
            self._others.on_event(event)
            return
        step = step_record(event)
        if event.subtask and not event.paused:
            label = self.labels.chunk(event.obs, event.subtask)  # event.obs: the state before the action
            if label is not None:
                self.labelled += 1
                step = step.model_copy(update={"label": [[round(float(x), 6) for x in row] for row in label]})
        # area-averaged as the policy's processor does it, so the stored frame is what the policy saw
        images = {k: resize_images(v[None], self.image_size)[0] for k, v in event.obs.images.items()}
        self.recorder.record_step(step, images)
        self.steps += 1


def shard_name(first_seed: int) -> str:
    return f"dagger_{first_seed:07d}"


def write_manifest(out: Path, settings: dict) -> None:
    """Record what every shard in `out` is made with; a directory recorded otherwise is one error."""
    path = out / MANIFEST
    meta = {"format": "hivla dagger round", "version": FORMAT_VERSION, **settings}
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != meta:
            differ = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise UserError(f"{out} holds a DAgger round recorded with other {', '.join(differ)} "
                             f"({', '.join(f'{k}={old.get(k)!r}' for k in differ)}); use another --out")
        return
    path.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def done_shards(out: str | Path) -> list[str]:
    """Names of the whole shards under a round's directory."""
    return sorted(p.name for p in Path(out).glob("dagger_*") if p.is_dir() and not p.name.endswith(PARTIAL))


def round_summary(out: str | Path) -> dict:
    """The counts of every whole shard in a round's directory, summed (a row of the per-round table)."""
    total: dict[str, float] = {}
    for name in done_shards(out):
        counts = Path(out, f"{name}.json")
        if counts.is_file():
            for k, v in json.loads(counts.read_text(encoding="utf-8")).items():
                if isinstance(v, (int, float)):
                    total[k] = total.get(k, 0) + v
    return total


def record_shard(out: str, seeds: list[int], suite: str, low_level: str | None, beta: float, image_size: int,
                 render_size: int, max_steps: int, families: list[str] | None, put_down_share: float = 0.0) -> dict:
    """Run `seeds` as episodes (oracle plans, `DaggerLowLevel` acts) into one session, the shard
    `dagger_<first seed>`; returns its counts. `low_level`: a vla spec, None for the shipped default."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    from agent.envs import SUITES, make_env
    from agent.envs.detours import PutDownDetours
    from agent.envs.oracle import OraclePlanner
    from agent.envs.tabletop import ACTION_NAMES, STATE_NAMES
    from agent.runtime.factory import build_loop
    from agent.specs import default_low_level_spec, make_low_level
    from policies.vla.policy import VlaLowLevel
    from sessions.recorder import SessionRecorder, make_header

    started = time.perf_counter()
    torch.set_num_threads(1)
    spec = low_level or default_low_level_spec()
    learned = make_low_level(spec, seed=seeds[0])
    if not isinstance(learned, VlaLowLevel):
        raise UserError(f"DAgger trains the low-level VLA: --low-level must be 'default' or vla:PATH, got {spec!r}")
    cfg = learned.policy.cfg
    labels = ExpertLabels(horizon=cfg.chunk_size, seed=seeds[0])
    low = DaggerLowLevel(learned, labels, beta, execute=cfg.n_action_steps)
    high = OraclePlanner(seed=seeds[0])
    if put_down_share > 0:
        high = PutDownDetours(high, put_down_share, seed=seeds[0])
    env = make_env(suite=suite, image_size=render_size, seed=seeds[0])  # the policy sees what `hivla run` renders
    header = make_header(
        high_level="oracle", low_level=f"dagger(beta={beta}, {spec})",
        cameras={c: (image_size, image_size) for c in ("front", "wrist")},
        state_names=list(STATE_NAMES), action_names=list(ACTION_NAMES),
        env={"suite": suite, "image_size": image_size, "render_size": render_size, "beta": beta, "policy": spec,
             "chunk_size": cfg.chunk_size, "n_action_steps": cfg.n_action_steps, "put_down_share": put_down_share,
             "seeds": [seeds[0], seeds[-1]]},
        notes="hivla datagen --mode dagger: Step.label is the scripted expert's chunk at the step's state",
    )
    fams = list(families or SUITES[suite])
    name = Path(out) / shard_name(seeds[0])
    partial = name.with_name(name.name + PARTIAL)
    if partial.exists():  # a killed run's leftover: recorded again from its first episode
        shutil.rmtree(partial)
    successes = 0
    try:
        with SessionRecorder(partial, header) as rec:
            recording = LabelledRecording(rec, labels, image_size)
            loop = build_loop(env, high, low, observers=[recording], compute_model_plan=False)
            for seed in seeds:
                low.begin_episode(seed)
                result = loop.run_episode(seed=seed, options={"family": fams[seed % len(fams)]}, max_steps=max_steps)
                successes += int(result.success)
            loop.close()
    finally:
        env.close()  # its renderer's GL context, on this thread (a finalizer on another one fails)
    counts = {"episodes": len(seeds), "successes": successes, "steps": recording.steps,
              "labelled_steps": recording.labelled,
              "expert_chunks": low.chunks["expert"], "policy_chunks": low.chunks["policy"],
              "seconds": round(time.perf_counter() - started, 1)}
    Path(f"{name}.json").write_text(json.dumps(counts) + "\n", encoding="utf-8")
    os.replace(partial, name)
    return counts



if __name__ == "__main__":  # python -m agent.training.dagger DIR...: each round's counts (a row of its table)
    import sys

    print(json.dumps({d: round_summary(d) for d in sys.argv[1:]}, indent=1))
