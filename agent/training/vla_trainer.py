"""The low-level VLA's training recipe (run by agent/training/loop.py): held-out action R², a periodic
closed-loop evaluation in the simulator (the number that matters: does the policy finish subtasks), an EMA.

OUT receives a loadable checkpoint at every save (config.json, model.safetensors holding the EMA
weights, tokenizer.json, norm_stats.json), plus train_model.safetensors (the raw weights),
train_state.safetensors (optimizer moments) and trainer_state.json for --resume, the cached tensor
dataset and train.log.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np
import torch

from agent.training.loop import (  # noqa: F401  (TRAINER_STATE: imported from here too)
    TRAINER_STATE, Logger, PresetSettings, Recipe, TrainingLoop,
)
from agent.training.trainer import resume_overrides, split_held_out
from agent.training.vla_data import build_processor, collect_vla_samples, encode_vla_samples, load_cache, save_cache
from policies.checkpoint import CheckpointError, load_state_dict_checked
from policies.pi05.processor import NormStats, load_tokenizer
from policies.vla.configuration import PRESETS, RESUMABLE_FIELDS, VlaConfig, make_config
from policies.vla.modeling import VlaModel, count_parameters
from policies.vla.policy import VlaLowLevel, VlaPolicy, save_checkpoint
from policies.vla.processor import VlaProcessor

RAW_WEIGHTS = "train_model.safetensors"
BATCH_KEYS = ("images", "state", "subtask_ids", "subtask_mask", "actions", "action_mask")
ACTION_NAMES = ("dx", "dy", "dz", "dyaw", "grip")


@dataclass(kw_only=True)
class VlaTrainSettings(PresetSettings):
    """The low-level VLA's training. The fields every run has (data, out, device, dtype, resume, seed, ...) are
    PresetSettings' and RecipeSettings' (agent/training/loop.py); the schedule's defaults are this recipe's."""

    presets: ClassVar[tuple[str, ...]] = tuple(PRESETS)
    preset: str = "small"
    steps: int = 30_000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    dtype: str = "fp32"
    save_every_s: float = 180.0
    threads: int | None = 1
    held_out_fraction: float = 0.05
    ema_decay: float = 0.999
    closed_loop_every: int = 5000  # steps between closed-loop evaluations (0: never)
    closed_loop_trials: int = 5  # trials per primitive in each of them
    eval_samples: int = 2048
    stride: int = 1
    vocab_size: int = 1024  # byte-level BPE: 518 ids are bytes and special tokens, the rest whole words
    data_cache: str | None = None  # an earlier run's directory on the same data: reuse its tensors and tokenizer
    init_from: str | None = None  # a VLA checkpoint to fine-tune: its config, tokenizer, norm stats and weights


def prepare(s: VlaTrainSettings, log: Logger) -> tuple[VlaConfig, VlaProcessor, dict, dict]:
    out = Path(s.out)
    cached = load_cache(out) if s.resume else None
    if s.resume and (out / "config.json").is_file():
        cfg = VlaConfig.load(out / "config.json")
        changed = resume_overrides(cfg, s.overrides, RESUMABLE_FIELDS)
        if changed:
            cfg.save(out / "config.json")
            log.echo(f"resuming with {changed}")
        processor = VlaProcessor.from_dir(out, cfg)
        if cached is None:
            cached = encode_vla_samples(collect_vla_samples(s.data, cfg, s.stride, log.echo), processor)
            save_cache(out, *cached)
        return cfg, processor, *cached
    if s.init_from:
        return _fine_tune_data(s, out, log)
    cfg = make_config(s.preset, **s.overrides)
    if s.data_cache:
        return (cfg, *_reuse_cache(Path(s.data_cache), cfg, log))
    t0 = time.perf_counter()
    raw = collect_vla_samples(s.data, cfg, s.stride, log.echo)
    processor = build_processor(raw, cfg, s.vocab_size)
    tensors, meta = encode_vla_samples(raw, processor)
    save_cache(out, tensors, meta)
    log.echo(f"data: {len(raw)} samples from {len(meta['episodes'])} episodes, {len(set(raw.subtasks))} distinct "
             f"subtasks, vocab {cfg.vocab_size}, by first word {meta['first_words']} ({time.perf_counter() - t0:.0f}s)")
    return cfg, processor, tensors, meta


def _fine_tune_data(s: VlaTrainSettings, out: Path, log: Logger) -> tuple[VlaConfig, VlaProcessor, dict, dict]:
    """--init-from: the checkpoint's config (only its inference-time fields may change by --set), tokenizer
    and norm stats, so the weights read the new data in the units they were trained in."""
    source = Path(s.init_from)
    cfg = VlaConfig.load(source / "config.json")
    changed = resume_overrides(cfg, s.overrides, RESUMABLE_FIELDS)
    processor = VlaProcessor.from_dir(source, cfg)
    tensors, meta = encode_vla_samples(collect_vla_samples(s.data, cfg, s.stride, log.echo), processor)
    save_cache(out, tensors, meta)
    log.echo(f"fine-tuning {source}{f' with {changed}' if changed else ''}: {meta['samples']} samples from "
             f"{len(meta['episodes'])} episodes, by first word {meta['first_words']}")
    return cfg, processor, tensors, meta


def _reuse_cache(run: Path, cfg: VlaConfig, log: Logger) -> tuple[VlaProcessor, dict, dict]:
    cached = load_cache(run)
    if cached is None or not (run / "tokenizer.json").is_file() or not (run / "config.json").is_file():
        raise ValueError(f"{run} holds no cached VLA data (vla_cache.safetensors, tokenizer.json, config.json); "
                         "point --data-cache at the --out of an earlier `hivla train --model vla` run")
    earlier = VlaConfig.load(run / "config.json")
    shape_fields = ("image_size", "cameras", "chunk_size", "max_subtask_tokens", "state_dim", "action_dim")
    differ = [k for k in shape_fields if getattr(earlier, k) != getattr(cfg, k)]
    if differ:
        raise ValueError(f"--data-cache {run} was built for other {', '.join(differ)}; drop --data-cache to rebuild")
    tokenizer = load_tokenizer(run / "tokenizer.json")
    cfg.vocab_size = tokenizer.get_vocab_size()
    processor = VlaProcessor(cfg, tokenizer, NormStats.load(run / "norm_stats.json"))
    log.echo(f"data: {cached[1]['samples']} cached samples from {len(cached[1]['episodes'])} episodes in {run}")
    return processor, *cached


def get_batch(tensors: dict, idx: torch.Tensor, device: torch.device) -> dict:
    return {k: tensors[k][idx].to(device) for k in BATCH_KEYS}


def autocast(device: torch.device, dtype: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


@torch.no_grad()
def held_out_metrics(model: VlaModel, tensors: dict, held: torch.Tensor, s: VlaTrainSettings,
                     device: torch.device) -> dict:
    """Held-out loss and the R² of the first predicted action per dimension (normalised units)."""
    if len(held) == 0:
        return {}
    model.eval()
    pick = held[torch.randperm(len(held), generator=torch.Generator().manual_seed(1234))[: s.eval_samples]]
    rng_state = torch.get_rng_state()
    torch.manual_seed(1234)
    losses, preds, targets = [], [], []
    for chunk in pick.split(256):
        b = get_batch(tensors, chunk, device)
        with autocast(device, s.dtype):
            loss, _ = model(b)
            pred = model.predict_action_chunk(b["images"], b["state"], b["subtask_ids"], b["subtask_mask"])
        losses.append(float(loss) * len(chunk))
        preds.append(pred[:, 0].float().cpu())
        targets.append(b["actions"][:, 0].float().cpu())
    torch.set_rng_state(rng_state)
    pred, target = torch.cat(preds), torch.cat(targets)
    r2 = 1 - ((pred - target) ** 2).sum(0) / ((target - target.mean(0)) ** 2).sum(0).clamp(min=1e-9)
    metrics = {"eval_loss": sum(losses) / len(pick)}
    metrics.update({f"r2_{name}": float(v) for name, v in zip(ACTION_NAMES, r2)})
    return metrics


def closed_loop(model: VlaModel, processor: VlaProcessor, s: VlaTrainSettings, device: torch.device, log) -> dict:
    """A few trials of every primitive in the simulator, the oracle setting up each situation."""
    from agent.envs.eval_primitives import evaluate

    policy = VlaLowLevel(VlaPolicy(model, processor, device=str(device), dtype=s.dtype))
    report = evaluate(trials=s.closed_loop_trials, seed=77, low_level=policy, log=lambda m: None)
    model.train()
    rates = {k: v["success_rate"] for k, v in report["per_primitive"].items()}
    return {"closed_loop_mean": float(np.mean(list(rates.values()))),
            **{f"closed_loop_{k}": v for k, v in rates.items()}}


def train_vla(s: VlaTrainSettings) -> dict:
    every = [n for n in (s.eval_every, s.closed_loop_every) if n]
    loop = TrainingLoop(s.loop_settings(eval_every=math.gcd(*every) if every else 0, log_every=100,
                                        label="train vla"))
    log, device, out = loop.log, loop.device, loop.out
    torch.manual_seed(s.seed)
    with loop.accelerator.main_process_first():  # the other processes read the data and vocabulary it made
        cfg, processor, tensors, meta = prepare(s if loop.main or s.data_cache else replace(s, resume=True), log)
        if loop.main and loop.world > 1 and not (out / "config.json").is_file():
            save_checkpoint(out, VlaModel(cfg), processor, extra={"step": 0})
    train_idx, held_idx = split_held_out(tensors, s.held_out_fraction, s.seed)

    model = VlaModel(cfg).to(device)
    ema = copy.deepcopy(model).eval()
    if loop.resuming:
        try:
            load_state_dict_checked(model, out / RAW_WEIGHTS)
            load_state_dict_checked(ema, out / "model.safetensors")
        except (CheckpointError, OSError, ValueError) as err:
            raise CheckpointError(f"cannot resume from {out}: {err}") from err
    elif s.init_from:  # the EMA weights a checkpoint holds start both the trained and the averaged copy
        load_state_dict_checked(model, Path(s.init_from) / "model.safetensors")
        ema.load_state_dict(model.state_dict())
    log.echo(f"model {cfg.preset} ({cfg.head} head): {count_parameters(model) / 1e6:.3f}M parameters; "
             f"{len(train_idx)} train / {len(held_idx)} held-out samples; {s.dtype} on {device}, {loop.threads} thread(s)")
    ema_params, params = list(ema.parameters()), list(model.parameters())

    def batches(step: int) -> Iterator[dict]:
        return (get_batch(tensors, idx, device) for idx in loop.shuffled(train_idx, s.seed, step))

    @torch.no_grad()
    def update_ema(step: int) -> None:  # early steps average less, so the EMA is not stuck at the init
        torch._foreach_lerp_(ema_params, params, 1.0 - min(s.ema_decay, (1 + step) / (10 + step)))

    def evaluate(step: int, final: bool) -> dict:
        metrics = {}
        if step % s.eval_every == 0 or final:
            metrics.update(held_out_metrics(ema, tensors, held_idx, s, device))
        if s.closed_loop_every and (step % s.closed_loop_every == 0 or final):
            t_eval = time.perf_counter()
            metrics.update(closed_loop(ema, processor, s, device, log))
            metrics["closed_loop_s"] = time.perf_counter() - t_eval
        return metrics

    loop.run(Recipe(model=model, batches=batches, after_step=update_ema, evaluate=evaluate,
                    save=lambda state: _save(out, model, ema, processor, state, s)))
    summary = {**loop.summary(), "parameters": count_parameters(model)}
    log.echo(f"done: {json.dumps(summary)}")
    return summary


def _save(out: Path, model: VlaModel, ema: VlaModel, processor: VlaProcessor, state: dict, s: VlaTrainSettings) -> None:
    from safetensors.torch import save_file

    info = {"model": "vla", "preset": model.cfg.preset, "head": model.cfg.head, "step": state["step"],
            "samples": state["samples"], "train_time_s": state["elapsed_s"], "data": s.data, "dtype": s.dtype,
            "weights": "EMA", "last_eval": state["history"][-1] if state["history"] else None}
    save_checkpoint(out, ema, processor, extra=info)
    tmp = out / f".{RAW_WEIGHTS}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(out / RAW_WEIGHTS)
