"""Offline quality of a checkpoint on its own held-out episodes (the split `hivla train` held out).

  1. High level: greedy decoding vs the oracle's subtask, strictly (the oracle's arbitrary order among
     equivalent blocks counts against the model), overall, by subtask kind, and on the frames where a
     decision is due (the answer differs from the subtask the context names: a finished step, a
     stale plan) as opposed to frames that continue the step under way.
  2. Low level (checkpoints trained with actions): R² of the action chunk against the recorded expert actions, per action dimension
     (1 = exact, 0 = no better than the mean action). The flow is integrated from zero noise, its
     most likely path; a sampled chunk scores lower by construction.

  3. Scene questions (planner frames only): exact-match accuracy of the answer, by question type.
  4. Context following (planner frames, --data): on frames whose context has a negation or a rule in
     force (coached frames, `hivla datagen --mode planner --coach scripted`), the share of plans that
     obey it (policies/obey.py's definition), the model's (decoded as at run time) beside the
     oracle's label (a sanity check: ~100%), overall, where the rules make a choice ("binding"),
     and by where the rule came from (negation, constraint, memory). Up to --frames such frames.

    python benchmarks/offline_eval.py --checkpoint runs/ckpt_small4 [--frames 600] [--threads 2]
    python benchmarks/offline_eval.py --checkpoint runs/planner --data runs/planner_frames_heldout

Without --data the checkpoint directory must hold the data cache `hivla train` wrote
(data_cache.safetensors) and its held-out split is used; with --data (planner frames recorded from
seeds the model never saw, `hivla datagen --mode planner`) every frame there is held out.
Prints a table and writes benchmarks/results/offline_eval.json (or --json).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import write_results  # noqa: E402

from policies.grammar import parse_subtask  # noqa: E402
from agent.training.dataset import collect_planner_frames, encode_samples, load_cache, split_episodes  # noqa: E402
from agent.training.trainer import decode_held_out, get_batch, parse_subtask_or_empty  # noqa: E402
from agent.training.planner_frames import read_rows  # noqa: E402
from policies.obey import Forbid, binding, obeys  # noqa: E402
from policies.pi05.policy import load_checkpoint  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "offline_eval.json"
ACTION_NAMES = ("dx", "dy", "dz", "dyaw", "grip")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, default=None, help="planner frames never trained on (default: the cache's split)")
    p.add_argument("--questions", type=float, default=1.0, help="with --data: scene questions per frame")
    p.add_argument("--frames", type=int, default=600, help="held-out frames decoded (and chunks sampled)")
    p.add_argument("--held-out-fraction", type=float, default=0.1, help="as in hivla train")
    p.add_argument("--seed", type=int, default=0, help="the training run's --seed (it fixes the split)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--json", type=Path, default=RESULTS)
    return p.parse_args(argv)


def subtask_kind(subtask: str) -> str:
    try:
        return parse_subtask(subtask).kind
    except ValueError:
        return "(unparsed)"


def context_following(plans: list[tuple[dict, str]]) -> dict:
    """(row, subtask decoded from its frame) pairs -> for the frames whose context rules something
    out, the share of the model's plans and of the oracle's labels that obey it, by group."""
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # frames, model obeys, oracle obeys
    for row, decoded in plans:
        forbids = [Forbid.from_dict(f) for f in row.get("forbids") or ()]
        if not forbids:
            continue
        allowed = row.get("allowed") or []
        groups = ["in force"] + (["binding"] if binding(forbids, allowed) else [])
        groups += [f"from: {source}" for source in sorted({f.source for f in forbids})]
        for group in groups:
            t = tally[group]
            t[0] += 1
            t[1] += obeys(decoded, forbids, allowed)
            t[2] += obeys(row["subtask"], forbids, allowed)
    return {g: {"frames": n, "model_obeys": m / n, "oracle_obeys": o / n} for g, (n, m, o) in sorted(tally.items())}


def ruled_frames(raw, rows: list[dict], order: torch.Tensor, limit: int) -> torch.Tensor:
    """Up to `limit` plan samples (in `order`) whose frame's context rules something out."""
    keep = [i for i in order.tolist() if raw.answers[i] is None and rows[raw.frame_of[i]].get("forbids")]
    return torch.tensor(keep[:limit], dtype=torch.long)


def print_following(following: dict) -> None:
    if not following:
        print("context following: no frame has a negation or rule in force (record coached frames: "
              "hivla datagen --mode planner --coach scripted)")
        return
    print(f"{'context following (negation / rule in force)':<44} {'n':>5} {'model':>10} {'oracle':>10}")
    for k, v in following.items():
        print(f"{k:<44} {v['frames']:>5} {100 * v['model_obeys']:>9.1f}% {100 * v['oracle_obeys']:>9.1f}%")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, processor = load_checkpoint(args.checkpoint)
    if model.cfg.vision_stem == "objects" or model.cfg.blind:
        if args.data is None:
            raise SystemExit("a grounded checkpoint is evaluated on planner frames it never saw: pass --data")
        return grounded_eval(args, model, processor)  # and the text-only baseline beside it
    if args.data is not None:
        cfg = model.cfg
        raw = collect_planner_frames([args.data], cfg.cameras, cfg.image_size, cfg.action_horizon,
                                     context_last=cfg.context_last, scene_questions=args.questions, seed=args.seed)
        tensors, meta = encode_samples(raw, processor)
        held = torch.arange(len(raw))
    else:
        cached = load_cache(args.checkpoint)
        if cached is None:
            raise SystemExit(f"{args.checkpoint} has no data cache; evaluate the directory `hivla train --out` wrote, "
                             "or pass --data with planner frames")
        tensors, meta = cached
        if meta.get("context_last", "in_force") != model.cfg.context_last:
            raise SystemExit(f"the cache holds context_last={meta.get('context_last', 'in_force')!r} contexts, "
                             f"the model reads {model.cfg.context_last!r}")
        _, held = split_episodes(tensors["episode"], args.held_out_fraction, args.seed)
    g = torch.Generator().manual_seed(1234)
    held = held[torch.randperm(len(held), generator=g)]
    is_plan = tensors["subtask_class"][held] >= 0
    pick = held[is_plan][: args.frames]
    questions = held[~is_plan][: args.frames]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    started = time.perf_counter()

    has_actions = model.cfg.flow_loss_weight > 0 and args.data is None  # planner frames carry no actions
    hits: dict[str, list[bool]] = defaultdict(list)
    pred_actions, true_actions, masks = [], [], []
    for chunk in pick.split(args.batch_size):
        b = get_batch(tensors, chunk, torch.device("cpu"))
        b["subtask_class"] = tensors["subtask_class"][chunk]
        with torch.no_grad(), autocast:
            out = model.generate(b["images"], b["prefix_ids"], b["prefix_mask"], b["context_ids"], b["context_mask"])
            if has_actions:
                zero = torch.zeros(len(chunk), model.cfg.action_horizon, model.cfg.action_dim)
                pred_actions.append(model.sample_actions(b["images"], b["prefix_ids"], b["prefix_mask"],
                                                         b["subtask_ids"], b["subtask_mask"], noise=zero).float())
                true_actions.append(b["actions"].float())
                masks.append(b["action_mask"].bool())
        for row, cls, ctx, cmask in zip(out.tolist(), b["subtask_class"].tolist(), b["context_ids"], b["context_mask"]):
            truth = meta["subtasks"][cls]
            decoded = parse_subtask_or_empty(processor.decode(row))
            context = processor.decode(ctx[cmask.bool()].tolist())
            ok = decoded == truth
            hits["all"].append(ok)
            hits[f"kind: {subtask_kind(truth)}"].append(ok)
            # the context's subtask (in force or done last) is the answer unless a decision is due
            named = context.split("|")[0].split(":", 1)[-1].strip() if context.strip() else ""
            hits["decision due" if named != truth else "continuing"].append(ok)

    r2 = None
    if has_actions:
        pred, true, mask = torch.cat(pred_actions), torch.cat(true_actions), torch.cat(masks)
        err = ((pred - true) ** 2)[mask].mean(0)
        spread = ((true - true[mask].mean(0)) ** 2)[mask].mean(0)
        r2 = (1 - err / spread).tolist()

    following = None
    if args.data is not None:  # context following: the ruled frames, decoded as above
        frame_rows = read_rows([args.data])
        ruled = ruled_frames(raw, frame_rows, held, args.frames)
        plans = []
        for chunk in ruled.split(args.batch_size) if len(ruled) else ():
            b = get_batch(tensors, chunk, torch.device("cpu"))
            with torch.no_grad(), autocast:
                out = model.generate(b["images"], b["prefix_ids"], b["prefix_mask"], b["context_ids"],
                                     b["context_mask"])
            plans += [(frame_rows[raw.frame_of[i]], parse_subtask_or_empty(processor.decode(row)))
                      for i, row in zip(chunk.tolist(), out.tolist())]
        following = context_following(plans)

    answered: dict[str, list[bool]] = defaultdict(list)
    if len(questions):
        decoded = decode_held_out(model, processor, tensors, questions, args.dtype,
                                  torch.device("cpu"))
        for text, c, t in zip(decoded, tensors["answer_class"][questions], tensors["question_type"][questions]):
            ok = text == meta["answers"][int(c)]
            answered["all"].append(ok)
            answered[meta["question_types"][int(t)]].append(ok)

    rows = {k: {"frames": len(v), "accuracy": float(np.mean(v))} for k, v in sorted(hits.items())}
    qa_rows = {k: {"questions": len(v), "accuracy": float(np.mean(v))} for k, v in sorted(answered.items())}
    result = {"checkpoint": str(args.checkpoint), "data": str(args.data) if args.data else "held-out split of the cache",
              "frames": len(pick), "context_last": model.cfg.context_last,
              "subtask_accuracy": rows, "scene_question_accuracy": qa_rows or None,
              "action_r2": dict(zip(ACTION_NAMES, r2)) if r2 else None, "context_following": following,
              "seconds": time.perf_counter() - started}
    print(f"{'held-out frames':<28} {'n':>5} {'subtask acc':>11}")
    for k, v in rows.items():
        print(f"{k:<28} {v['frames']:>5} {100 * v['accuracy']:>10.1f}%")
    if qa_rows:
        print(f"{'scene questions':<28} {'n':>5} {'answer acc':>11}")
        for k, v in qa_rows.items():
            print(f"{k:<28} {v['questions']:>5} {100 * v['accuracy']:>10.1f}%")
    if r2:
        print("action R² (zero-noise chunk vs expert): " + "  ".join(f"{n} {x:.3f}" for n, x in zip(ACTION_NAMES, r2)))
    else:
        print("action R²: none (a planner-only checkpoint, or planner frames, which carry no actions)")
    if following is not None:
        print_following(following)
    write_results(result, args.json)
    return 0


def grounded_eval(args: argparse.Namespace, model, processor) -> int:
    """A grounded planner (`--preset grounded`): how its read-out reads (objects, places, whole lines)
    and how it decides, with the line its read-out wrote beside the true line forced in its place
    (so the table says whether reading or deciding limits), on decision-due frames by subtask kind;
    and its scene questions (answered after the line, as it decides)."""
    from agent.training.readout_trainer import beliefs_before, evaluate_readout, load_frames, read_episodes
    from policies.pi05.policy import decode_grounded

    cfg = model.cfg
    started = time.perf_counter()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    frames = load_frames([args.data], cfg.image_size, log=lambda *_: None)
    g = torch.Generator().manual_seed(1234)
    # a read-out that carries a belief reads each episode in order, as on a robot: every frame with what it
    # read on the frame before
    heads, left = read_episodes(model.vision, frames.images, frames.previous, args.dtype, torch.device("cpu")) \
        if not cfg.blind and cfg.readout_belief else (None, None)
    reading = None if cfg.blind else evaluate_readout(
        model.vision, frames, torch.randperm(len(frames.tasks), generator=g)[: args.frames * 2], args.dtype,
        torch.device("cpu"), heads=heads)

    def belief(chunk: torch.Tensor) -> dict | None:
        if heads is None:
            return None
        return beliefs_before(left, frames.previous[[raw.frame_of[i] for i in chunk.tolist()]])

    raw = collect_planner_frames([args.data], cfg.cameras, cfg.image_size, cfg.action_horizon,
                                 context_last=cfg.context_last, scene_questions=args.questions, seed=args.seed,
                                 thoughts="scene_bowls" if cfg.scene_bowls else "scene")
    tensors, meta = encode_samples(raw, processor)
    order = torch.randperm(len(raw), generator=g)
    is_plan = tensors["subtask_class"][order] >= 0
    plans, questions = order[is_plan][: args.frames], order[~is_plan][: args.frames]
    hits: dict[str, list[bool]] = defaultdict(list)
    frame_rows = read_rows([args.data])

    def run_time_plans(chunk: torch.Tensor) -> list[str]:
        """The plans the planner writes at run time on these samples (its own line; the blind baseline none)."""
        b = get_batch(tensors, chunk, torch.device("cpu"))
        with torch.no_grad(), autocast:
            if cfg.blind:
                out = model.generate(b["images"], b["prefix_ids"], b["prefix_mask"], b["context_ids"],
                                     b["context_mask"])
                return [processor.decode(row) for row in out.tolist()]
            texts, _ = decode_grounded(model, processor, b["images"], b["prefix_ids"], b["prefix_mask"],
                                       b["context_ids"], b["context_mask"], [raw.tasks[i] for i in chunk.tolist()],
                                       belief=belief(chunk))
        return texts

    decoded: dict[int, str] = {}  # sample -> its run-time plan's text
    for chunk in plans.split(args.batch_size):
        b = get_batch(tensors, chunk, torch.device("cpu"))
        tasks = [raw.tasks[i] for i in chunk.tolist()]
        true_lines = [raw.thoughts[i] for i in chunk.tolist()]
        with torch.no_grad(), autocast:
            if cfg.blind:  # the text-only baseline writes no line: it decides from the text alone
                out = model.generate(b["images"], b["prefix_ids"], b["prefix_mask"], b["context_ids"], b["context_mask"])
                texts = given = [processor.decode(row) for row in out.tolist()]
                lines = [""] * len(texts)
            else:
                texts, lines = decode_grounded(model, processor, b["images"], b["prefix_ids"], b["prefix_mask"],
                                               b["context_ids"], b["context_mask"], tasks, belief=belief(chunk))
                given, _ = decode_grounded(model, processor, b["images"], b["prefix_ids"], b["prefix_mask"],
                                           b["context_ids"], b["context_mask"], tasks, lines=true_lines,
                                           belief=belief(chunk))
        for i, text, true_text, line, true_line in zip(chunk.tolist(), texts, given, lines, true_lines):
            decoded[i] = text
            truth = raw.plan_subtasks[i]
            ok = parse_subtask_or_empty(text) == truth
            ctx = frame_rows[raw.frame_of[i]]["context"]
            done_last = ctx["done"][-1] if ctx["done"] else None
            due = done_last != truth  # the subtask completed last is the answer unless a decision is due
            groups = ["all", "decision due" if due else "continuing",
                      "line right" if line == true_line else "line wrong"]
            if ctx["in_force"] and ctx["in_force"] != done_last:  # the re-plan timer, mid-subtask
                groups.append("timer re-plan, " + ("keep the subtask" if truth == ctx["in_force"] else "change it"))
            if due:
                groups.append(f"decision due, kind: {subtask_kind(truth)}")
            for group in groups:
                hits[group].append(ok)
                hits[f"{group} (true line given)"].append(parse_subtask_or_empty(true_text) == truth)
    ruled = ruled_frames(raw, frame_rows, order, args.frames)
    missing = torch.tensor([i for i in ruled.tolist() if i not in decoded], dtype=torch.long)
    for chunk in missing.split(args.batch_size) if len(missing) else ():
        decoded.update(zip(chunk.tolist(), run_time_plans(chunk)))
    following = context_following([(frame_rows[raw.frame_of[i]], parse_subtask_or_empty(decoded[i]))
                                   for i in ruled.tolist()])
    answered: dict[str, list[bool]] = defaultdict(list)
    for chunk in ([] if cfg.blind or not len(questions) else questions.split(args.batch_size)):
        b = get_batch(tensors, chunk, torch.device("cpu"))
        with torch.no_grad(), autocast:
            texts, _ = decode_grounded(model, processor, b["images"], b["prefix_ids"], b["prefix_mask"],
                                       b["context_ids"], b["context_mask"], [raw.tasks[i] for i in chunk.tolist()],
                                       grammar=False)
        for i, text in zip(chunk.tolist(), texts):
            ok = parse_subtask_or_empty(text) == raw.answers[i]
            answered["all"].append(ok)
            answered[raw.question_types[i]].append(ok)
    rows = {k: {"frames": len(v), "accuracy": float(np.mean(v))} for k, v in sorted(hits.items())}
    qa_rows = {k: {"questions": len(v), "accuracy": float(np.mean(v))} for k, v in sorted(answered.items())}
    result = {"checkpoint": str(args.checkpoint), "data": str(args.data), "reading": reading,
              "decisions": rows, "scene_question_accuracy": qa_rows, "context_following": following,
              "seconds": time.perf_counter() - started}
    if reading is not None:
        print(f"reading, {reading['frames']} frames: objects placed right {100 * reading['objects_right']:.1f}%, "
              f"scene lines wholly right {100 * reading['scene_lines_right']:.1f}%, "
              f"frames with every block right {100 * reading['frames_all_blocks_right']:.1f}%")
        for place, v in reading["per_place"].items():
            print(f"  {place:<10} {v['n']:>6} {100 * v['right']:>6.1f}%")
    print(f"{'held-out plan frames':<44} {'n':>5} {'read line':>10} {'true line':>10}")
    for k, v in rows.items():
        if not k.endswith("(true line given)"):
            print(f"{k:<44} {v['frames']:>5} {100 * v['accuracy']:>9.1f}% "
                  f"{100 * rows[k + ' (true line given)']['accuracy']:>9.1f}%")
    print(f"{'scene questions':<44} {'n':>5} {'answer acc':>10}")
    for k, v in qa_rows.items():
        print(f"{k:<44} {v['questions']:>5} {100 * v['accuracy']:>9.1f}%")
    print_following(following)
    write_results(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
