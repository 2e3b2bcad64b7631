"""The data of `hivla finetune` (pi05): the coaching corrections and the base data each batch mixes.

Corrections: the relabelled frames around each correction (agent/training/corrections.py), one
agreement sample per correction, split by episode into training and held-out; read from the
exports' coaching tables alone (labels computed at export: sessions/export/coaching.py). Base data: the
sessions the base checkpoint was trained on, or a cached tensor dataset (the base checkpoint's
data_cache, or base_cache.safetensors that an earlier fine-tune wrote), at most max_base_samples.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from agent.training.corrections import (
    CorrectionDataError,
    agreement_samples,
    correction_samples,
    is_held_out,
    load_coached_episodes,
)
from agent.training.dataset import CACHE_FILE, collect_samples, encode_samples, load_cache
from agent.training.finetune_settings import FinetuneSettings
from policies.pi05.processor import Pi05Processor

BASE_CACHE_FILE = "base_cache.safetensors"


def _tokenizer_digest(processor: Pi05Processor) -> str:
    return hashlib.sha256(processor.tok.to_str().encode()).hexdigest()[:16]


def _subset(tensors: dict, n: int, seed: int) -> dict:
    total = len(tensors["prefix_ids"])
    if total <= n:
        return tensors
    keep = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return {k: v[keep] for k, v in tensors.items()}


def base_dataset(s: FinetuneSettings, processor: Pi05Processor, log) -> tuple[dict, int]:
    """Base training tensors (at most max_base_samples) and the size of the base dataset they come
    from, in samples. Sources, in order: --base-data (session dirs, or dirs holding a cache),
    the base checkpoint's own data cache, the data paths its checkpoint_info.json names."""
    base = Path(s.base)
    sources = list(s.base_data or [])
    if not sources:
        if (base / CACHE_FILE).is_file():
            sources = [str(base)]
        else:
            info = base / "checkpoint_info.json"
            sources = json.loads(info.read_text()).get("data", []) if info.is_file() else []
    if not sources:
        raise CorrectionDataError(f"no base data: pass --base-data (the `hivla datagen` sessions the base "
                                  f"checkpoint was trained on); {base} has no data cache or data record")
    cached = [Path(p) for p in sources if (Path(p) / BASE_CACHE_FILE).is_file() or (Path(p) / CACHE_FILE).is_file()]
    if cached:
        if len(sources) > 1:
            raise CorrectionDataError("--base-data: give one cached dataset directory, or session directories")
        d = cached[0]
        if (d / BASE_CACHE_FILE).is_file():
            from safetensors.torch import load_file

            meta = json.loads((d / (BASE_CACHE_FILE + ".json")).read_text())
            if meta.get("tokenizer") != _tokenizer_digest(processor):
                raise CorrectionDataError(f"{d / BASE_CACHE_FILE} was encoded with another tokenizer than {base}'s")
            tensors, total = load_file(str(d / BASE_CACHE_FILE)), int(meta["base_samples_total"])
        else:
            if d.resolve() != base.resolve():
                if not (d / "tokenizer.json").is_file() or \
                        (d / "tokenizer.json").read_bytes() != (base / "tokenizer.json").read_bytes():
                    raise CorrectionDataError(f"{d / CACHE_FILE} was not encoded with {base}'s tokenizer "
                                              f"(no identical {d / 'tokenizer.json'}); pass the base sessions instead")
            tensors, meta = load_cache(d)
            if meta.get("context_last", "in_force") != processor.cfg.context_last:
                raise CorrectionDataError(
                    f"{d / CACHE_FILE} holds context_last={meta.get('context_last', 'in_force')!r} contexts but "
                    f"{base} reads {processor.cfg.context_last!r}; pass the base sessions instead")
            total = len(tensors["prefix_ids"])
        log(f"base data: {total} samples in {d}")
        return _subset(tensors, s.max_base_samples, s.seed), total
    cfg = processor.cfg
    raw = collect_samples(sources, cfg.cameras, cfg.image_size, cfg.action_horizon, s.base_stride, log,
                          context_last=cfg.context_last)
    total = len(raw) * s.base_stride  # the base dataset at stride 1 (what the base checkpoint saw)
    tensors, _ = encode_samples(raw, processor)
    tensors = _subset(tensors, s.max_base_samples, s.seed)
    from safetensors.torch import save_file

    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / BASE_CACHE_FILE))
    (out / (BASE_CACHE_FILE + ".json")).write_text(json.dumps(
        {"sources": sources, "stride": s.base_stride, "base_samples_total": total,
         "tokenizer": _tokenizer_digest(processor)}, indent=1) + "\n")
    log(f"base data: {len(raw)} samples (stride {s.base_stride}) of ~{total} from {sources}; cached in {out}")
    return tensors, total


@dataclass
class CorrectionData:
    train: dict  # tensors of the relabelled windows of the training corrections
    agree_train: dict  # one sample per training correction
    agree_held: dict  # one sample per held-out correction
    train_labels: list
    held_labels: list
    stats: dict


def correction_dataset(s: FinetuneSettings, processor: Pi05Processor, log) -> CorrectionData:
    cfg = processor.cfg
    coached = load_coached_episodes(s.data, log)
    if not any(c.labels for c in coached):
        raise CorrectionDataError(f"no usable corrections (override/negation/constraint naming a subtask) in {s.data}")
    held = [c for c in coached if is_held_out(c.key, s.held_out_fraction)]
    train = [c for c in coached if not is_held_out(c.key, s.held_out_fraction)]
    if not any(c.labels for c in train):  # every correction fell in the held-out split: hold none out
        train, held = coached, []
    raw, owner = correction_samples(train, cfg.cameras, cfg.image_size, cfg.action_horizon, s.window_before,
                                    s.window_after, include_approved=s.approved_plans,
                                    with_corrections=s.with_corrections, context_last=cfg.context_last)
    tensors, _ = encode_samples(raw, processor)
    agree_train_raw, train_labels = agreement_samples(train, cfg.cameras, cfg.image_size, cfg.action_horizon,
                                                         cfg.context_last)
    agree_train, _ = encode_samples(agree_train_raw, processor)
    held_labels, agree_held = [], {}
    if held:
        agree_held_raw, held_labels = agreement_samples(held, cfg.cameras, cfg.image_size, cfg.action_horizon,
                                                            cfg.context_last)
        agree_held, _ = encode_samples(agree_held_raw, processor)
    by_family: dict[str, int] = {}
    for lab in train_labels + held_labels:
        by_family[lab.family or "?"] = by_family.get(lab.family or "?", 0) + 1
    approved = sum(1 for o in owner if o < 0)
    stats = {"episodes": len(coached), "train_episodes": len(train), "held_out_episodes": len(held),
             "corrections": len(train_labels) + len(held_labels), "train_corrections": len(train_labels),
             "held_out_corrections": len(held_labels), "correction_samples": len(raw),
             "approved_plan_samples": approved, "by_family": by_family}
    log(f"corrections: {stats['corrections']} from {len(coached)} episodes ({len(held_labels)} held out); "
        f"{len(raw)} training samples ({len(raw) - approved} around corrections, {approved} approved plans); "
        f"by family {by_family}")
    return CorrectionData(tensors, agree_train, agree_held, train_labels, held_labels, stats)
