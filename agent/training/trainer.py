"""The π0.5-style model's training recipe (run by agent/training/loop.py): its data, its model, its
held-out evaluation (loss and greedy subtask / answer accuracy) and its checkpoint.

OUT (the checkpoint directory) receives config.json, model.safetensors, tokenizer.json,
norm_stats.json (a loadable checkpoint at every save), plus train_state.safetensors (optimizer
moments) and trainer_state.json (step, elapsed time, metrics) for --resume, the cached tensor
dataset and train.log.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Iterator

import torch

from agent.training.dataset import (
    build_tokenizer_and_stats, collect_samples, encode_samples, load_cache, recontext_cache, save_cache, split_episodes,
)
from agent.training.loop import (  # noqa: F401  (TRAINER_STATE, sigterm_as_interrupt: imported from here too)
    TRAINER_STATE, Logger, PresetSettings, Recipe, TrainingLoop, sigterm_as_interrupt,
)
from policies.pi05.configuration import PRESETS, Pi05Config, make_config
from policies.pi05.modeling import Pi05Model, count_parameters
from policies.checkpoint import warm_start
from policies.pi05.policy import CheckpointError, load_state_dict_checked, save_checkpoint
from policies.pi05.processor import NormStats, Pi05Processor, load_tokenizer
from policies.planning import PlanParseError, parse_plan


@dataclass(kw_only=True)
class TrainSettings(PresetSettings):
    """The π0.5-style model's training. The fields every run has (data, out, device, dtype, resume, seed, ...) are
    PresetSettings' and RecipeSettings' (agent/training/loop.py); the schedule's defaults are this recipe's."""

    presets: ClassVar[tuple[str, ...]] = tuple(PRESETS)
    preset: str = "small"
    steps: int = 4000
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 200
    threads: int | None = 2
    eval_every: int = 500
    eval_samples: int = 256
    eval_generate: int = 48
    stride: int = 1
    vocab_size: int = 1024
    init_from: str | None = None  # a checkpoint to start from (its tokenizer, norm stats and matching weights)
    scene_questions: float = 0.4  # planner frames: scene questions per frame, on average
    question_weights: dict[str, float] | None = None  # how often each question type is asked (None: alike)
    readout: str | None = None  # grounded preset: a stage-1 object read-out, loaded and frozen (its features cached)


# ---------------------------------------------------------------------------------------------
# data + model set-up (fresh or resumed)
# ---------------------------------------------------------------------------------------------


# Fields a resumed run may change: none of them changes a parameter's shape.
RESUMABLE_OVERRIDES = ("context_last", "knowledge_insulation", "text_loss_weight", "flow_loss_weight",
                       "action_token_loss_weight")


def resume_overrides(cfg, overrides: dict, resumable: tuple[str, ...] = RESUMABLE_OVERRIDES) -> dict:
    """Apply --set overrides to a resumed run's config (pi05's or the VLA's); only `resumable` fields may
    change. Returns the fields changed."""
    fixed = sorted(k for k, v in overrides.items() if k not in resumable and getattr(cfg, k, object()) != v)
    if fixed:
        raise ValueError(f"--set {', '.join(fixed)} cannot change when resuming (the checkpoint's shapes depend on "
                         f"them); a resumed run may change only {', '.join(resumable)}")
    changed = {k: v for k, v in overrides.items() if getattr(cfg, k) != v}
    for key, value in changed.items():
        setattr(cfg, key, value)
    cfg.validate()
    return changed


def prepare(s: TrainSettings, log: Logger):
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    cached = load_cache(out) if s.resume else None
    if s.resume and (out / "config.json").is_file():
        cfg = Pi05Config.load(out / "config.json")
        retargeted = resume_overrides(cfg, s.overrides)
        processor = Pi05Processor.from_dir(out, cfg)
        if cached is None:
            raw = collect_samples(s.data, cfg.cameras, cfg.image_size, cfg.action_horizon, s.stride, log.echo,
                                  context_last=cfg.context_last, scene_questions=s.scene_questions,
                                  thoughts=thought_kind(cfg), question_weights=s.question_weights)
            cached = encode_samples(raw, processor)
            save_cache(out, *cached)
        elif cached[1].get("context_last", "in_force") != cfg.context_last:
            log.echo(f"re-encoding the cached coaching contexts for context_last={cfg.context_last!r}")
            recontext_cache(*cached, s.data, processor, s.stride, log.echo)
            save_cache(out, *cached)
        if retargeted:
            cfg.save(out / "config.json")
            log.echo(f"resuming with {retargeted}")
    else:
        cfg = make_config(s.preset, **s.overrides)
        t0 = time.perf_counter()
        raw = collect_samples(s.data, cfg.cameras, cfg.image_size, cfg.action_horizon, s.stride, log.echo,
                              context_last=cfg.context_last, scene_questions=s.scene_questions,
                                  thoughts=thought_kind(cfg), question_weights=s.question_weights)
        if s.init_from:  # keep the tokens and state bins the weights were trained with
            tokenizer = load_tokenizer(Path(s.init_from) / "tokenizer.json")
            stats = NormStats.load(Path(s.init_from) / "norm_stats.json")
        else:
            tokenizer, stats = build_tokenizer_and_stats(raw, s.vocab_size)
        cfg.vocab_size = tokenizer.get_vocab_size()
        processor = Pi05Processor(cfg, tokenizer, stats)
        cached = encode_samples(raw, processor)
        save_cache(out, *cached)
        truncated = sum(len(processor.target_ids(t, u)) >= cfg.max_target_tokens and
                        processor.target_ids(t, u)[-1] != cfg.eos_id
                        for t, u, a in zip(raw.thoughts, raw.plan_subtasks, raw.answers or [None] * len(raw)) if a is None)
        log.echo(f"data: {len(raw)} samples from {len(set(raw.episode_keys))} episodes, "
                 f"{len(cached[1]['subtasks'])} distinct subtasks, vocab {cfg.vocab_size}, "
                 f"{truncated} targets cut at {cfg.max_target_tokens} tokens ({time.perf_counter() - t0:.0f}s)")
    tensors, meta = cached
    return cfg, processor, tensors, meta


def thought_kind(cfg: Pi05Config) -> str:
    """What a planner-frame plan's thought is for this config: none for the text-only baseline, the
    scene line for a grounded planner (with the bowls where its read-out reads them), the oracle's otherwise."""
    if cfg.blind:
        return "none"
    if cfg.vision_stem == "objects":
        return "scene_bowls" if cfg.scene_bowls else "scene"
    return "oracle"


def split_held_out(tensors: dict, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and held-out sample indices, whole episodes held out; refuses a split that leaves none to train on."""
    train_idx, held_idx = split_episodes(tensors["episode"], fraction, seed)
    if len(train_idx) == 0:
        raise ValueError("no training samples left after holding out episodes; record more episodes")
    return train_idx, held_idx


def freeze_readout(model: Pi05Model, readout: str, resuming: bool, log: Logger) -> None:
    """Stage 2 of the grounded recipe: the stage-1 read-out's weights (unless resuming, when the
    checkpoint already holds them), frozen but for the projection into the backbone, which is new."""
    from agent.training.readout_trainer import load_readout_into

    if model.cfg.vision_stem != "objects":
        raise ValueError(f"--readout is for the grounded preset (vision_stem 'objects'), not {model.cfg.vision_stem!r}")
    if not resuming:
        load_readout_into(model, readout)
    for name, param in model.vision.named_parameters():
        param.requires_grad = name.startswith("proj.")


@torch.no_grad()
def object_features(model: Pi05Model, images: torch.Tensor, dtype: str, device: torch.device) -> torch.Tensor:
    """The frozen read-out's features of every frame [N, n_objects, vision_width], computed once, so a
    training step runs no convolution."""
    was_training = model.vision.training
    model.vision.eval()
    parts = []
    for chunk in images.split(256):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            parts.append(model.vision.features(chunk.to(device)).float().cpu())
    model.vision.train(was_training)
    return torch.cat(parts)


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------

BATCH_KEYS = ("images", "prefix_ids", "prefix_mask", "context_ids", "context_mask", "subtask_ids", "subtask_mask",
              "target_ids", "target_mask", "actions", "action_mask")


TEXT_SEGMENTS = ("prefix", "context", "subtask", "target")


def get_batch(tensors: dict, idx: torch.Tensor, device: torch.device) -> dict:
    """The samples `idx` as model inputs. Frames are stored once and shared by the samples made on
    them (`frame`); each text segment is cut to the longest in the batch, as its padding is masked
    anyway (every segment is padded at its end), so a batch of short texts costs short sequences."""
    batch = {k: tensors[k][idx] for k in BATCH_KEYS if k != "images"}
    frames = tensors["frame"][idx] if "frame" in tensors else idx
    batch["images"] = tensors["images"][frames]
    if "object_features" in tensors:  # a frozen read-out's cached features stand in for its convolutions
        batch["object_features"] = tensors["object_features"][frames]
    for name in TEXT_SEGMENTS:
        mask = batch[f"{name}_mask"]
        keep = max(1, int(mask.sum(1).max()))
        batch[f"{name}_ids"], batch[f"{name}_mask"] = batch[f"{name}_ids"][:, :keep], mask[:, :keep]
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: Pi05Model, processor: Pi05Processor, tensors: dict, meta: dict, held: torch.Tensor,
             s: TrainSettings, device: torch.device) -> dict:
    """Held-out loss (fixed noise) and subtask accuracy of greedy decoding against the oracle plan."""
    model.eval()
    if len(held) == 0:
        return {}
    g = torch.Generator().manual_seed(1234)
    pick = held[torch.randperm(len(held), generator=g)[: s.eval_samples]]
    cpu_state = torch.get_rng_state()
    torch.manual_seed(1234)
    totals: dict[str, float] = {}
    n = 0
    for chunk in pick.split(s.batch_size):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.dtype == "bf16"):
            _, info = model(get_batch(tensors, chunk, device))
        for k, v in info.items():
            totals[k] = totals.get(k, 0.0) + v * len(chunk)
        n += len(chunk)
    torch.set_rng_state(cpu_state)
    metrics = {f"eval_{k}": v / n for k, v in totals.items()}
    plans = pick[tensors["subtask_class"][pick] >= 0][: s.eval_generate]
    decoded = decode_held_out(model, processor, tensors, plans, s.dtype, device)
    metrics["eval_subtask_acc"] = sum(parse_subtask_or_empty(text) == meta["subtasks"][int(c)] for text, c in
                                      zip(decoded, tensors["subtask_class"][plans])) / max(1, len(plans))
    if "answer_class" in tensors and bool((tensors["answer_class"][held] >= 0).any()):
        questions = held[tensors["answer_class"][held] >= 0]
        questions = questions[torch.randperm(len(questions), generator=g)[: s.eval_generate]]
        decoded = decode_held_out(model, processor, tensors, questions, s.dtype, device)
        if model.cfg.vision_stem == "objects":  # "I see: ... So: <answer>"
            decoded = [parse_subtask_or_empty(text) for text in decoded]
        right = [text == meta["answers"][int(c)] for text, c in zip(decoded, tensors["answer_class"][questions])]
        metrics["eval_question_acc"] = sum(right) / len(right)
    model.train()
    return metrics


def parse_subtask_or_empty(text: str) -> str:
    try:
        return parse_plan(text).subtask
    except PlanParseError:
        return ""


def decode_held_out(model: Pi05Model, processor: Pi05Processor, tensors: dict, idx: torch.Tensor,
                    dtype: str, device: torch.device) -> list[str]:
    """Greedy decoding of the samples `idx` (as at inference: [base | context] then the target)."""
    texts: list[str] = []
    for chunk in idx.split(32):
        b = get_batch(tensors, chunk, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = model.generate(b["images"], b["prefix_ids"], b["prefix_mask"], b["context_ids"], b["context_mask"],
                                 object_features=b.get("object_features"))
        texts.extend(processor.decode(row) for row in out.tolist())
    return texts



# ---------------------------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------------------------


def train(s: TrainSettings) -> dict:
    loop = TrainingLoop(s.loop_settings(betas=(0.9, 0.95), log_every=50))
    log, device, out = loop.log, loop.device, loop.out
    torch.manual_seed(s.seed)
    with loop.accelerator.main_process_first():  # the other processes read the data and vocabulary it made
        cfg, processor, tensors, meta = prepare(s if loop.main else replace(s, resume=True), log)
        if loop.main and loop.world > 1 and not (out / "config.json").is_file():
            save_checkpoint(out, Pi05Model(cfg), processor.tok, processor.stats, extra={"step": 0})
    train_idx, held_idx = split_held_out(tensors, s.held_out_fraction, s.seed)

    model = Pi05Model(cfg).to(device)
    if loop.resuming:
        try:
            load_state_dict_checked(model, out / "model.safetensors")
        except (CheckpointError, OSError, ValueError) as err:
            raise CheckpointError(f"cannot resume from {out}: {err}") from err
    elif s.init_from:
        fresh = warm_start(model, Path(s.init_from) / "model.safetensors")
        log.echo(f"initialised from {s.init_from}; {len(fresh)} tensors start fresh: {', '.join(fresh) or 'none'}")
    if s.readout:
        freeze_readout(model, s.readout, loop.resuming, log)
        tensors["object_features"] = object_features(model, tensors["images"], s.dtype, device)
        log.echo(f"object read-out from {s.readout} frozen; its features cached for {len(tensors['images'])} frames")
    params = count_parameters(model)
    log.echo(f"model {cfg.preset}: {params['total'] / 1e6:.2f}M parameters {params}; "
             f"{len(train_idx)} train / {len(held_idx)} held-out samples; {s.dtype} on {device}")

    def batches(step: int) -> Iterator[dict]:
        return (get_batch(tensors, idx, device) for idx in loop.shuffled(train_idx, s.seed, step))

    loop.run(Recipe(model=model, batches=batches, save=lambda state: _save(out, model, processor, state, s),
                    evaluate=lambda step, final: evaluate(model, processor, tensors, meta, held_idx, s, device)))
    summary = {**loop.summary(), "parameters": params}
    log.echo(f"done: {json.dumps(summary)}")
    return summary


def _save(out: Path, model: Pi05Model, processor: Pi05Processor, state: dict, s: TrainSettings) -> None:
    info = {"preset": model.cfg.preset, "step": state["step"], "samples": state["samples"],
            "train_time_s": state["elapsed_s"], "data": s.data, "dtype": s.dtype,
            "last_eval": state["history"][-1] if state["history"] else None}
    save_checkpoint(out, model, processor.tok, processor.stats, extra=info)
