"""Training samples for the π0.5-style model, built from recorded sessions.

One sample per kept control step:
  images      front/wrist frames of that step, resized to the model's image size
  state, task the base prefix
  context     what the control loop's PlanContext would hold if asked at that step: the subtask in
              force just before it (plan_history[-1]) or, with the config's context_last="done", the
              subtask completed most recently (completed_subtasks[-1]), or with "history" the phrase
              PlannerContext.last("history") makes of both ("done: a; b | doing: x"); and the recent
              planning corrections
  target      the planner's answer at that step: the plan in force, or the next recorded plan when the
              episode's progress (Step.subtask_index) has moved on since the plan in force was made
              (plans are only re-made on a timer, so the one in force can be stale)
  subtask     the subtask in force (what the recorded actions executed: the low level's instruction)
  actions     the next H actions of the episode (padded past the end, with a mask)

Everything is tokenised/normalised once and cached as one safetensors file, so training epochs
read tensors only (no video decoding, no tokenizer calls).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from policies.pi05.configuration import Pi05Config
from policies.planning import CONTEXT_CORRECTIONS, PLANNING_KINDS
from policies.pi05.processor import NormStats, Pi05Processor, pad_to, prompt_corpus, resize_images, train_tokenizer

CACHE_FILE = "data_cache.safetensors"
CACHE_META = "data_cache.json"
THOUGHTS = ("oracle", "scene", "scene_bowls", "none")  # what a planner-frame sample's thought is (collect_planner_frames)


@dataclass
class RawSamples:
    """Samples before tokenisation (strings and arrays)."""

    images: list[np.ndarray] = field(default_factory=list)  # uint8 [n_cam, S, S, 3]
    states: list[np.ndarray] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    last_subtasks: list[str | None] = field(default_factory=list)
    corrections: list[list[str]] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)  # high-level target
    plan_subtasks: list[str] = field(default_factory=list)  # high-level target
    subtasks: list[str] = field(default_factory=list)  # low-level instruction
    actions: list[np.ndarray] = field(default_factory=list)  # [H, A]
    action_masks: list[np.ndarray] = field(default_factory=list)  # [H]
    episode_keys: list[str] = field(default_factory=list)  # "session/episode", for the held-out split
    # Scene questions (co-trained with the plans): the answer the target holds instead of a plan, and
    # the question's type; None on a plan sample. `frame_of`, when set, maps each sample to its row
    # of `images` (several samples share one frame); empty means one frame a sample.
    answers: list[str | None] = field(default_factory=list)
    question_types: list[str | None] = field(default_factory=list)
    frame_of: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.states)

    def texts(self) -> list[str]:
        return sorted(set(self.tasks) | set(self.thoughts) | set(self.subtasks) | set(self.plan_subtasks)
                      | {a for a in self.answers if a}
                      | {c for cs in self.corrections for c in cs} | {f"{label}: {s}" for s in set(self.last_subtasks) if s for label in ("last", "done")})


def planner_targets(steps: list, plans: list) -> list[int | None]:
    """For each step, the index into `plans` of the planner's answer at that step (see module doc)."""
    index_of = {p.plan_id: i for i, p in enumerate(plans)}
    progress_at = {s.step: s.subtask_index for s in steps}
    out: list[int | None] = []
    for step in steps:
        k = index_of.get(step.plan_id)
        if k is not None and k + 1 < len(plans) and step.subtask_index is not None:
            made_at = progress_at.get(plans[k].step)
            if made_at is not None and step.subtask_index > made_at:
                k += 1
        out.append(k)
    return out


def last_completed(steps: list, plans: list) -> list[str | None]:
    """For each step, the subtask completed most recently when the step's plan was made: what the
    control loop's PlanContext.completed_subtasks[-1] held (the rule: sessions.export.coaching.subtasks_done)."""
    from sessions.export.coaching import subtasks_done

    return [done[-1] if done else None for done in subtasks_done(steps, plans)]


def history_context(done: list[str] | tuple[str, ...], in_force: str | None) -> str | None:
    """The "history" phrase of a context_last="history" model ("done: a; b | doing: x"), written by its
    one owner, PlannerContext.last, from the subtasks done (the most recent last) and the one in force."""
    from policies.planning import PlannerContext

    return PlannerContext(task="", done=tuple(done), in_force=in_force).last("history")  # the phrase reads no task


def context_subtasks(steps: list, plans: list, context_last: str) -> list[str | None]:
    """What each step's coaching context names of the episode's progress (see Pi05Config.context_last):
    the subtask in force before the step, the one completed last ("done"), or ("history") the phrase
    of the subtasks done when the step's plan was made and the one in force before the step."""
    if context_last == "done":
        return last_completed(steps, plans)
    plan_of = {p.plan_id: p for p in plans}
    in_force = [None if i == 0 or steps[i - 1].plan_id not in plan_of else plan_of[steps[i - 1].plan_id].plan.subtask
                for i in range(len(steps))]
    if context_last == "history":
        from sessions.export.coaching import subtasks_done

        return [history_context(done, now) for done, now in zip(subtasks_done(steps, plans), in_force)]
    return in_force


def collect_samples(data_paths: list[str | Path], cameras: tuple[str, ...], image_size: int, horizon: int,
                    stride: int = 1, log=print, context_last: str = "in_force", frames: bool = True,
                    scene_questions: float = 0.0, thoughts: str = "oracle",
                    question_weights: dict[str, float] | None = None) -> RawSamples:
    """Samples from recorded sessions, or from planner-frame shards (`hivla datagen --mode planner`;
    `scene_questions` is then how many scene questions a frame gets on average, `question_weights` how
    often each type is asked, and `thoughts` which thought a plan has: see collect_planner_frames).
    `frames=False` reads the events only (no video decoding; `images` stays empty): enough to
    rebuild the text columns of a cache."""
    from agent.training.planner_frames import is_planner_frames
    from sessions.reader import iter_sessions

    kinds = {is_planner_frames(p) for p in data_paths}
    if kinds == {True}:
        return collect_planner_frames(data_paths, cameras, image_size, horizon, log, context_last, scene_questions,
                                      thoughts=thoughts, question_weights=question_weights)
    if len(kinds) > 1:
        raise ValueError("--data mixes planner-frame directories with recorded sessions; train on one kind at a time")

    raw = RawSamples()
    n_sessions = 0
    for session in iter_sessions(data_paths, on_error=lambda p, e: log(f"skipping {p}: {e}")):
        n_sessions += 1
        for ep in session.episodes:
            if not ep.steps or not ep.plans:
                continue
            plans = sorted(ep.plans, key=lambda p: p.plan_id)
            index_of = {p.plan_id: i for i, p in enumerate(plans)}
            targets = planner_targets(ep.steps, plans)
            context = context_subtasks(ep.steps, plans, context_last)
            kept = list(range(0, len(ep.steps), stride))
            # decode only the kept frames, resized in one batch per camera
            small = {cam: resize_images(np.stack([ep.frame(cam, i) for i in kept]), image_size)
                     for cam in (cameras if frames else ())}
            row_of = {i: r for r, i in enumerate(kept)}
            actions = np.asarray([s.action for s in ep.steps], np.float32)
            for i in kept:
                step = ep.steps[i]
                if step.plan_id not in index_of or step.paused or targets[i] is None:
                    continue
                target = plans[targets[i]].plan
                last = context[i]
                chunk = np.zeros((horizon, actions.shape[1]), np.float32)
                mask = np.zeros(horizon, bool)
                future = actions[i: i + horizon]
                chunk[: len(future)] = future
                mask[: len(future)] = True
                corr = [c.text for c in ep.active_corrections if c.step <= step.step and c.kind in PLANNING_KINDS]
                if frames:
                    raw.images.append(np.stack([small[c][row_of[i]] for c in cameras]))
                raw.states.append(np.asarray(step.state, np.float32))
                raw.tasks.append(ep.task)
                raw.last_subtasks.append(last)
                raw.corrections.append(corr[-CONTEXT_CORRECTIONS:])
                raw.thoughts.append(target.thought)
                raw.plan_subtasks.append(target.subtask)
                raw.subtasks.append(plans[index_of[step.plan_id]].plan.subtask)
                raw.actions.append(chunk)
                raw.action_masks.append(mask)
                raw.episode_keys.append(f"{session.header.session_id}/{ep.episode}")
    if not len(raw):
        raise ValueError(f"no training samples found under {[str(p) for p in data_paths]} "
                         f"({n_sessions} sessions read); record some with `hivla datagen`")
    return raw


def collect_planner_frames(data_paths: list[str | Path], cameras: tuple[str, ...], image_size: int, horizon: int,
                           log=print, context_last: str = "done", scene_questions: float = 0.0,
                           seed: int = 0, thoughts: str = "oracle",
                           question_weights: dict[str, float] | None = None) -> RawSamples:
    """Each kept frame gives one plan sample (the oracle's plan, with the context the loop gave the
    planner) and, on average, `scene_questions` question samples on the same frame (the question in
    the task's place, no coaching context, the answer as the target; `question_weights`: how often each
    type is asked, relative, 1 for a type not named). No actions: a planner recipe.
    `thoughts`: "oracle", the oracle's own; "scene", the scene line the simulator's facts give
    (policies/scene_line.py), for plans and questions alike ("I see: ... So: <subtask or answer>"), the
    grounded planner's ("scene_bowls": the line with its bowls, for a read-out that reads them); "none", no thought at all (the text-only baseline, which never sees the scene)."""
    if thoughts not in THOUGHTS:
        raise ValueError(f"thoughts must be one of {THOUGHTS}, got {thoughts!r}")
    grounded = thoughts in ("scene", "scene_bowls")
    bowls = thoughts == "scene_bowls"
    from agent.training.planner_frames import read_shard, shards
    from agent.training.scene_questions import sample_questions, type_probabilities
    from policies.planning import PlannerContext
    from policies.scene_line import format_scene, scene_from_facts

    rng = np.random.default_rng(seed)
    probabilities = type_probabilities(question_weights)
    raw = RawSamples()
    no_chunk, no_mask = np.zeros((horizon, 5), np.float32), np.zeros(horizon, bool)
    stems = [stem for path in data_paths for stem in shards(path)]
    if not stems:
        raise ValueError(f"no planner-frame shards under {[str(p) for p in data_paths]}; "
                         "record some with `hivla datagen --mode planner`")
    for stem in stems:
        rows, images, states = read_shard(stem)
        if images.shape[1] != len(cameras):
            raise ValueError(f"{stem}: frames of {images.shape[1]} cameras, the model reads {len(cameras)}")
        images = resize_images(images.reshape(-1, *images.shape[2:]), image_size).reshape(
            len(images), len(cameras), image_size, image_size, 3)
        for row, frame, state in zip(rows, images, states):
            raw.images.append(frame)
            frame_index = len(raw.images) - 1
            ctx = PlannerContext.from_dict(row["context"])
            key = f"{stem.parent.name}/{row['episode']}"
            n_questions = int(scene_questions) + int(rng.random() < scene_questions - int(scene_questions))
            asked = sample_questions(row["facts"], rng, n_questions, probabilities) if n_questions else []
            thought = (format_scene(scene_from_facts(row["facts"], ctx.task, bowls)) if grounded
                       else "" if thoughts == "none" else row["thought"])
            samples = [(ctx.task, ctx.last(context_last), ctx.read_texts, thought, row["subtask"], None, None)]
            samples += [(question, None, [], format_scene(scene_from_facts(row["facts"], question, bowls)) if grounded else "",
                         "", answer, kind) for kind, question, answer in asked]
            for task, last, corrections, thought, subtask, answer, kind in samples:
                raw.frame_of.append(frame_index)
                raw.states.append(np.asarray(state, np.float32))
                raw.tasks.append(task)
                raw.last_subtasks.append(last)
                raw.corrections.append(list(corrections))
                raw.thoughts.append(thought)
                raw.plan_subtasks.append(subtask)
                raw.subtasks.append(ctx.in_force or "")
                raw.actions.append(no_chunk)
                raw.action_masks.append(no_mask)
                raw.episode_keys.append(key)
                raw.answers.append(answer)
                raw.question_types.append(kind)
    n_plans = sum(a is None for a in raw.answers)
    log(f"planner frames: {len(raw.images)} frames from {len(set(raw.episode_keys))} episodes in {len(stems)} shards; "
        f"{n_plans} plan samples, {len(raw) - n_plans} scene questions")
    return raw


def build_tokenizer_and_stats(raw: RawSamples, vocab_size: int):
    tokenizer = train_tokenizer(prompt_corpus() + raw.texts() * 4, vocab_size=vocab_size)
    valid_actions = np.concatenate([a[m] for a, m in zip(raw.actions, raw.action_masks)])
    if not len(valid_actions):  # planner frames: no actions, and a planner-only model never reads these stats
        valid_actions = np.array([[-1.0] * raw.actions[0].shape[1], [1.0] * raw.actions[0].shape[1]], np.float32)
    stats = NormStats.from_data(np.stack(raw.states), valid_actions)
    return tokenizer, stats


def encode_samples(raw: RawSamples, processor: Pi05Processor) -> tuple[dict[str, torch.Tensor], dict]:
    cfg = processor.cfg
    cols: dict[str, list] = {k: [] for k in ("prefix", "subtask", "target")}
    answers = raw.answers or [None] * len(raw)
    for i in range(len(raw)):
        cols["prefix"].append(pad_to(processor.prefix_ids(raw.tasks[i], raw.states[i]), cfg.prefix_text_len))
        cols["subtask"].append(pad_to(processor.subtask_ids(raw.subtasks[i]), cfg.max_subtask_tokens))
        if answers[i] is None:
            target = processor.target_ids(raw.thoughts[i], raw.plan_subtasks[i])
        else:  # a grounded answer is written after the scene line, as a plan's subtask is
            target = processor.target_ids(raw.thoughts[i], answers[i]) if raw.thoughts[i] else processor.answer_ids(answers[i])
        cols["target"].append(pad_to(target, cfg.max_target_tokens))
    out = {"images": torch.from_numpy(np.stack(raw.images)),
           "frame": torch.tensor(raw.frame_of or range(len(raw)), dtype=torch.long)}
    for name, pairs in cols.items():
        out[f"{name}_ids"] = torch.from_numpy(np.stack([p[0] for p in pairs]))
        out[f"{name}_mask"] = torch.from_numpy(np.stack([p[1] for p in pairs]))
    out.update(encode_contexts(raw, processor))
    out["actions"] = torch.from_numpy(np.stack([processor.normalize_actions(a) for a in raw.actions]))
    out["action_mask"] = torch.from_numpy(np.stack(raw.action_masks))
    keys = sorted(set(raw.episode_keys))
    episode_index = {k: i for i, k in enumerate(keys)}
    out["episode"] = torch.tensor([episode_index[k] for k in raw.episode_keys], dtype=torch.long)
    # the evaluation's labels: the plan's subtask (-1 on a question), the answer and question type (-1 on a plan)
    subtasks = sorted({s for s, a in zip(raw.plan_subtasks, answers) if a is None})
    answer_texts = sorted({a for a in answers if a is not None})
    types = sorted({t for t in raw.question_types if t})
    subtask_index, answer_index, type_index = ({v: i for i, v in enumerate(vs)} for vs in (subtasks, answer_texts, types))
    out["subtask_class"] = torch.tensor([subtask_index[s] if a is None else -1 for s, a in zip(raw.plan_subtasks, answers)],
                                        dtype=torch.long)
    out["answer_class"] = torch.tensor([-1 if a is None else answer_index[a] for a in answers], dtype=torch.long)
    out["question_type"] = torch.tensor([type_index[t] if t else -1 for t in (raw.question_types or [None] * len(raw))],
                                        dtype=torch.long)
    return out, {"subtasks": subtasks, "answers": answer_texts, "question_types": types, "episodes": keys,
                 "context_last": cfg.context_last}


def encode_contexts(raw: RawSamples, processor: Pi05Processor) -> dict[str, torch.Tensor]:
    cfg = processor.cfg
    pairs = [pad_to(processor.context_ids(raw.last_subtasks[i], raw.corrections[i]), cfg.max_context_tokens)
             for i in range(len(raw))]
    return {"context_ids": torch.from_numpy(np.stack([p[0] for p in pairs])),
            "context_mask": torch.from_numpy(np.stack([p[1] for p in pairs]))}


def recontext_cache(tensors: dict[str, torch.Tensor], meta: dict, data_paths: list[str | Path], processor: Pi05Processor,
                    stride: int, log=print) -> None:
    """Re-encode a cache's coaching contexts in place for the config's context_last, reading the
    sessions' events only (minutes faster than decoding every frame again)."""
    cfg = processor.cfg
    raw = collect_samples(data_paths, cfg.cameras, cfg.image_size, cfg.action_horizon, stride, log,
                          context_last=cfg.context_last, frames=False)
    if len(raw) != len(tensors["context_ids"]) or sorted(set(raw.episode_keys)) != meta["episodes"]:
        raise ValueError(f"the data under {[str(p) for p in data_paths]} is not the data this cache was built "
                         f"from ({len(raw)} vs {len(tensors['context_ids'])} samples); remove the cache to rebuild it")
    tensors.update(encode_contexts(raw, processor))
    meta["context_last"] = cfg.context_last


def save_cache(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / CACHE_FILE))
    (path / CACHE_META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def load_cache(path: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    from safetensors.torch import load_file

    if not (path / CACHE_FILE).is_file() or not (path / CACHE_META).is_file():
        return None
    return load_file(str(path / CACHE_FILE)), json.loads((path / CACHE_META).read_text(encoding="utf-8"))


def split_episodes(episode: torch.Tensor, held_out_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample indices (train, held-out), split by whole episodes so held-out frames are unseen scenes."""
    n_ep = int(episode.max()) + 1
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_ep, generator=g)
    n_held = int(round(n_ep * held_out_fraction)) if n_ep > 1 else 0
    if held_out_fraction > 0 and n_ep > 1:
        n_held = max(1, n_held)
    held = torch.zeros(n_ep, dtype=torch.bool)
    held[order[:n_held]] = True
    is_held = held[episode]
    return torch.nonzero(~is_held).flatten(), torch.nonzero(is_held).flatten()
