"""Fine-tune the high level of a π0.5-style checkpoint on base data ∪ coaching corrections.

    settings = FinetuneSettings(base="ckpt/small", data=["exports/round1"], out="ckpt/round1")  # finetune_settings.py
    summary = finetune(settings)

What is trained: the high level only. The loss is the text cross-entropy of "thought So: subtask";
the action expert (the low level's own weights) is frozen. Because π0.5's low level reads the
backbone's keys/values of [images | task | state | subtask], a drifting backbone would move the
low level too; `anchor_weight` keeps those keys/values where the base checkpoint had them (a
relative MSE against a frozen copy), so the fine-tuned checkpoint stays a usable low level.
With `lora=True` only LoRA adapters (peft) on the backbone's projections are trained and merged
into the saved weights. A planner-only checkpoint (flow_loss_weight 0, e.g. the grounded planner,
whose low level is another model) has no low level to keep usable: it runs without the anchor.

A grounded planner (vision_stem "objects") keeps its object read-out frozen but for its projection
into the backbone, as its recipe trained it, and the read-out's features are computed once per frame;
what it learns is "<scene line> So: <subtask>", its base samples planner frames whose line is the
simulator's (as `hivla train` builds them), its coaching samples the line its read-out writes at that
frame with the facts said in force (finetune_data.py). Its evaluation decodes as it plans: the
sample's line forced, then the subtask under the plan grammar.

Batches: a fixed share (`correction_share`, default 0.1) of every batch comes from the coaching
data (agent/training/finetune_data.py, over corrections.py: the frames around each correction,
relabelled with what the coach wanted, plus, with `approved_plans`, the model's own decisions the
coach let stand; all of it read from the export's coaching table, whose labels the export computed), the rest from the base training data (sessions recorded by `hivla datagen`, or a cached tensor dataset such
as the base checkpoint's data_cache).

Evaluation, before and after: correction agreement (the share of corrections whose subtask the
model now decodes itself at the moment the coach spoke, with the context it had then, minus the
coaching) on held-out correction episodes and on the training ones, and the subtask accuracy on
a fixed sample of base data (does the model still plan the base tasks?).

The loop is agent/training/loop.py's, as for every recipe. Multi-process: it goes through `accelerate`
(DDP; gloo on the CPU), so
`accelerate launch --multi_gpu --num_processes 2 -m agent.commands.finetune ...` runs the same loop
on two processes (on a machine without GPUs accelerate falls back to DDP over gloo on the CPU; its
`--cpu` flag instead means one CPU process); each process draws its own part of every batch. Resumable: OUT holds a loadable checkpoint
after every save plus the optimizer state (finetune_state.json, train_state.safetensors).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Iterator

import torch

from agent.training.finetune_data import (
    CorrectionData,
    base_dataset,
    correction_dataset,
    frame_index,
    is_grounded,
    plan_samples,
    take_samples,
)
from agent.training.finetune_settings import FinetuneSettings
from agent.training.loop import Recipe, TrainingLoop
from agent.training.trainer import BATCH_KEYS, TEXT_SEGMENTS, object_features
from policies.grammar import normalize
from policies.pi05.modeling import Pi05Model
from policies.pi05.policy import CheckpointError, load_checkpoint, load_state_dict_checked, save_checkpoint
from policies.pi05.processor import Pi05Processor

STATE_FILE = "finetune_state.json"
LORA_FILE = "lora_adapter.safetensors"
# the low level's own weights: frozen
EXPERT_PREFIXES = ("expert", "expert_norm", "action_in", "action_out", "time_mlp")
LORA_TARGETS = r"backbone\.\d+\.(q|k|v|o|mlp\.gate|mlp\.up|mlp\.down)"


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------


def freeze_low_level(model: Pi05Model) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(EXPERT_PREFIXES))


def freeze_readout(model: Pi05Model) -> None:
    """A grounded planner's object read-out stays as its recipe left it (frozen but for its projection
    into the backbone, as `hivla train --readout` trains it): its reading writes the scene line."""
    for name, p in model.vision.named_parameters():
        p.requires_grad_(name.startswith("proj."))


def has_low_level(model: Pi05Model) -> bool:
    """Whether the checkpoint's action expert was trained (a planner-only one, flow_loss_weight 0, is
    never a low level: policies.pi05.policy.Pi05LowLevel refuses it)."""
    return model.cfg.flow_loss_weight > 0


def add_lora(model: Pi05Model, rank: int) -> torch.nn.Module:
    """LoRA adapters on the backbone's attention and MLP projections (everything else frozen)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise SystemExit("--lora needs peft: pip install 'hivla[lora]'") from err
    for p in model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGETS)
    return inject_adapter_in_model(config, model)


def lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if "lora_" in k}


def merged_copy(model: torch.nn.Module, cfg) -> Pi05Model:
    """A plain Pi05Model with the LoRA updates folded into its weights (for saving)."""
    plain = Pi05Model(cfg)
    state = {}
    full = model.state_dict()
    scale = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            scale[name] = module.scaling["default"]
    for key, value in full.items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer", "")] = value
    for name, sc in scale.items():
        a = full[f"{name}.lora_A.default.weight"].float()
        b = full[f"{name}.lora_B.default.weight"].float()
        state[f"{name}.weight"] = state[f"{name}.weight"].float() + sc * (b @ a)
    plain.load_state_dict(state, strict=True)
    return plain


class HighLevelObjective(torch.nn.Module):
    """Text loss of the plan (+ the low-level anchor). A module so DDP can wrap it."""

    def __init__(self, model: torch.nn.Module, anchor_weight: float, reference: Pi05Model | None = None):
        super().__init__()
        self.model = model
        self.anchor_weight = anchor_weight
        self.reference = reference  # the frozen base model, whose keys/values anchor the low level's inputs

    def train(self, mode: bool = True) -> "HighLevelObjective":
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # the anchor is the base model as it plans, never in training mode
        return self

    def forward(self, batch: dict, reference: list | None = None) -> tuple[torch.Tensor, dict]:
        """reference: the base model's keys/values on this batch (default: computed by `self.reference`)."""
        m = self.model
        if reference is None and self.reference is not None and self.anchor_weight > 0:
            reference = reference_keys_values(self.reference, batch)
        hidden, cache, layout = m.run_training_backbone(batch)
        base_valid, sub_valid = layout["base_valid"], layout["subtask_valid"]
        p, c, s = base_valid.shape[1], layout["context_valid"].shape[1], sub_valid.shape[1]
        text_loss, _, _ = m.text_loss(hidden, batch, layout)
        loss = text_loss
        info = {"text_loss": float(text_loss.detach())}
        if reference is not None and self.anchor_weight > 0:
            keep = torch.cat([torch.arange(p), torch.arange(p + c, p + c + s)]).to(hidden.device)
            valid = torch.cat([base_valid, sub_valid], 1).float()[:, None, :, None]  # [B, 1, L, 1]
            terms = []
            for (k, v), (rk, rv) in zip(cache, reference):
                for new, ref in ((k.index_select(2, keep), rk), (v.index_select(2, keep), rv)):
                    err = ((new.float() - ref.float()) ** 2 * valid).sum() / (valid.sum() * new.shape[-1] * new.shape[1])
                    terms.append(err / (ref.float().pow(2).mean() + 1e-6))
            anchor = torch.stack(terms).mean()
            loss = loss + self.anchor_weight * anchor
            info["anchor"] = float(anchor.detach())
        info["loss"] = float(loss.detach())
        return loss, info


@torch.no_grad()
def reference_keys_values(reference: Pi05Model, batch: dict) -> list:
    cache, _, _ = reference.encode_action_context(batch["images"], batch["prefix_ids"], batch["prefix_mask"],
                                                  batch["subtask_ids"], batch["subtask_mask"])
    return cache


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def decoded_subtasks(model: torch.nn.Module, processor: Pi05Processor, tensors: dict, dtype: str,
                     device: torch.device, batch_size: int = 32) -> list[str]:
    """The subtask greedy decoding gives each sample. A grounded planner decodes as it plans: its scene
    line forced (the sample's own: for a coaching sample the line its read-out writes at that frame, for
    a base frame the simulator's), then "So: <subtask>" under the plan grammar."""
    model.eval()
    out: list[str] = []
    n = len(tensors["prefix_ids"]) if tensors else 0
    for start in range(0, n, batch_size):
        b = _to_device(_gather(tensors, torch.arange(start, min(n, start + batch_size))), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            if is_grounded(model.cfg):
                texts = _decode_grounded(model, processor, b)
            else:
                ids = model.generate(b["images"], b["prefix_ids"], b["prefix_mask"], b["context_ids"],
                                     b["context_mask"])
                texts = [processor.decode(row) for row in ids.tolist()]
        out.extend(processor.parse_plan(text)[1] for text in texts)
    model.train()
    return out


def _decode_grounded(model, processor: Pi05Processor, b: dict) -> list[str]:
    """Plans decoded after each sample's own scene line (its target's thought); a line cut short in the
    target (max_target_tokens) is the read-out's reading instead."""
    from policies.pi05.objects import read_scenes
    from policies.pi05.policy import decode_grounded
    from policies.scene_line import SceneParseError, format_scene, parse_scene, split_scene

    lines = []
    for row in b["target_ids"].tolist():
        line = split_scene(processor.parse_plan(processor.decode(row))[0])[0]
        try:
            lines.append(format_scene(parse_scene(line)) if line else None)
        except SceneParseError:
            lines.append(None)
    if any(line is None for line in lines):
        read = read_scenes(model.vision.heads(model.vision.features(b["images"])), [""] * len(lines))
        lines = [line if line is not None else format_scene(scene) for line, scene in zip(lines, read)]
    texts, _ = decode_grounded(model, processor, b["images"], b["prefix_ids"], b["prefix_mask"], b["context_ids"],
                               b["context_mask"], [""] * len(lines), lines=lines)
    return texts


def agreement(model, processor, tensors: dict, labels: list, dtype: str, device) -> dict:
    """Share of corrections whose subtask the model now decodes itself, overall and per family."""
    if not labels:
        return {"n": 0, "agreement": None, "by_family": {}}
    predicted = decoded_subtasks(model, processor, tensors, dtype, device)
    hits = [normalize(p) == normalize(lab.subtask) for p, lab in zip(predicted, labels)]
    fams: dict[str, list[bool]] = {}
    for h, lab in zip(hits, labels):
        fams.setdefault(lab.family or "?", []).append(h)
    return {"n": len(labels), "agreement": sum(hits) / len(hits),
            "by_family": {f: sum(v) / len(v) for f, v in sorted(fams.items())}}


def base_plan_accuracy(model, processor, base: dict, dtype: str, device) -> float | None:
    """Subtask accuracy of greedy decoding on a fixed sample of base data (forgetting check)."""
    if not base or not len(base["prefix_ids"]):
        return None
    predicted = decoded_subtasks(model, processor, base, dtype, device)
    truth = [processor.parse_plan(processor.decode(row[1:]))[1] for row in base["target_ids"].tolist()]
    return sum(normalize(p) == normalize(t) for p, t in zip(predicted, truth)) / len(truth)


def evaluate(model, processor, data: CorrectionData, base_eval: dict, s: FinetuneSettings, device) -> dict:
    held = agreement(model, processor, data.agree_held, data.held_labels, s.dtype, device)
    train = agreement(model, processor, data.agree_train, data.train_labels, s.dtype, device)
    return {"held_out_agreement": held["agreement"], "train_agreement": train["agreement"],
            "held_out_by_family": held["by_family"], "train_by_family": train["by_family"],
            "base_plan_accuracy": base_plan_accuracy(model, processor, base_eval, s.dtype, device)}


# ---------------------------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------------------------


def _draw(n_pool: int, k: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, n_pool, (k,), generator=g)


def _gather(tensors: dict, idx: torch.Tensor) -> dict:
    """The samples `idx` as model inputs, on the CPU (frames through `frame`, a frozen read-out's cached
    features with them)."""
    batch = {k: tensors[k][idx] for k in BATCH_KEYS if k != "images"}
    frames = frame_index(tensors)[idx]
    batch["images"] = tensors["images"][frames]
    if "object_features" in tensors:
        batch["object_features"] = tensors["object_features"][frames]
    return batch


def _cat(a: dict, b: dict) -> dict:
    return {k: torch.cat([a[k], b[k]]) for k in a}


def _to_device(batch: dict, device) -> dict:
    """Each text segment cut to the longest in the batch (padding is at the end and masked, as
    trainer.get_batch does), then moved."""
    batch = dict(batch)
    for name in TEXT_SEGMENTS:
        mask = batch[f"{name}_mask"]
        keep = max(1, int(mask.sum(1).max()))
        batch[f"{name}_ids"], batch[f"{name}_mask"] = batch[f"{name}_ids"][:, :keep], mask[:, :keep]
    return {k: v.to(device) for k, v in batch.items()}


def finetune(s: FinetuneSettings) -> dict:
    s.validate()
    loop = TrainingLoop(s.loop_settings(weight_decay=s.weight_decay, betas=(0.9, 0.95), log_every=25,
                                        log_file="finetune.log", label="finetune", progress=s.progress))
    world, main, device, out, say = loop.world, loop.main, loop.device, loop.out, loop.log.echo
    torch.manual_seed(s.seed)

    # -- model: the base checkpoint (or, resuming, OUT's), expert frozen (and a grounded planner's read-out)
    base_model, processor = load_checkpoint(s.base)
    grounded = is_grounded(base_model.cfg)
    state = loop.state
    if loop.resuming and (out / STATE_FILE).is_file():
        try:
            state.update(json.loads((out / STATE_FILE).read_text()))
        except (OSError, ValueError) as err:
            raise CheckpointError(f"cannot resume from {out}: {err}") from err
    if s.lora:
        model = add_lora(copy.deepcopy(base_model), s.lora_rank)
        if loop.resuming:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(out / LORA_FILE)), strict=False)
    else:
        model = copy.deepcopy(base_model)
        freeze_low_level(model)
        if grounded:
            freeze_readout(model)
        if loop.resuming:
            load_state_dict_checked(model, out / "model.safetensors")
    # The anchor keeps the keys/values the action expert reads; a planner-only checkpoint has no low level
    # to keep usable (the low level is another model, e.g. the VLA), so it runs without one.
    anchor_weight = s.anchor_weight if has_low_level(base_model) else 0.0
    if anchor_weight != s.anchor_weight:
        say(f"{s.base} is a planner only (flow_loss_weight 0): no low level reads its keys/values, so no anchor")
    reference = base_model.to(device).eval() if anchor_weight > 0 else None
    if reference is not None:
        for p in reference.parameters():
            p.requires_grad_(False)
    del base_model  # the reference, when there is one, holds it
    model = model.to(device)

    # -- data (every process builds the same tensors; each draws its own batches)
    readout = model.vision if grounded else None  # frozen: the reading that writes the scene lines
    data = correction_dataset(s, processor, say, readout=readout)
    base, base_total = base_dataset(s, processor, say)
    if grounded:  # the frozen read-out's features, computed once: a training step runs no convolution
        for tensors in (data.train, data.agree_train, data.agree_held, base):
            if tensors:
                tensors["object_features"] = object_features(model, tensors["images"], s.dtype, device)
        say(f"object read-out frozen; its features cached for {len(base['images'])} base and "
            f"{len(data.train['images'])} coaching frames")
    g_eval = torch.Generator().manual_seed(4321)
    plans = plan_samples(base)  # the forgetting check decodes plans (not scene questions)
    eval_idx = plans[torch.randperm(len(plans), generator=g_eval)[: s.eval_base_samples]]
    base_eval = take_samples(base, eval_idx)
    per_proc = max(1, s.batch_size // world)
    n_corr = max(1, round(s.correction_share * per_proc))
    n_base = per_proc - n_corr
    share_of_base = data.stats["correction_samples"] / max(1, base_total)
    say(f"batch {s.batch_size} = {world} x ({n_corr} correction + {n_base} base samples); "
        f"correction data {data.stats['correction_samples']} samples = {100 * share_of_base:.2f}% of the "
        f"{base_total} base samples")
    objective = HighLevelObjective(model, anchor_weight, reference)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not loop.resuming and main:
        state["before"] = evaluate(model, processor, data, base_eval, s, device)
        say("before: " + _fmt_eval(state["before"]))
    loop.accelerator.wait_for_everyone()
    state.update(corrections=data.stats, base_samples_total=base_total, correction_share_of_base=share_of_base,
                 trainable_parameters=n_trainable, processes=world, anchor_weight=anchor_weight)

    def batches(step: int) -> Iterator[dict]:
        g = torch.Generator().manual_seed(s.seed * 1000 + loop.rank * 7919 + step)
        while True:
            corrections = _gather(data.train, _draw(len(data.train["prefix_ids"]), n_corr, g))
            yield _to_device(_cat(corrections, _gather(base, _draw(len(base["prefix_ids"]), n_base, g))) if n_base
                             else corrections, device)

    def after(step: int, final: bool) -> dict:
        if final:
            state["after"] = evaluate(model, processor, data, base_eval, s, device)
            say("after:  " + _fmt_eval(state["after"]))
        return {}

    loop.run(Recipe(model=objective, batches=batches, evaluate=after,
                    save=lambda state: _save(out, model, processor, state, s)))
    summary = {k: state.get(k) for k in ("step", "elapsed_s", "before", "after", "corrections", "base_samples_total",
                                           "correction_share_of_base", "trainable_parameters", "processes",
                                           "anchor_weight")}
    if main:
        (out / "finetune_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    loop.accelerator.wait_for_everyone()
    return summary


def _fmt_eval(m: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    return (f"correction agreement held-out {pct(m['held_out_agreement'])}, train {pct(m['train_agreement'])}; "
            f"base plan accuracy {pct(m['base_plan_accuracy'])}")


def _save(out: Path, model: torch.nn.Module, processor: Pi05Processor, state: dict, s: FinetuneSettings) -> None:
    plain = merged_copy(model, processor.cfg) if s.lora else model
    info = {"finetuned_from": str(Path(s.base).resolve()), "step": state["step"], "data": s.data,
            "correction_share": s.correction_share, "lora": s.lora,
            "anchor_weight": state.get("anchor_weight", s.anchor_weight),
            "before": state.get("before"), "after": state.get("after"), **s.extra}
    save_checkpoint(out, plain, processor.tok, processor.stats, extra=info)
    if s.lora:
        from safetensors.torch import save_file

        save_file(lora_state(model), str(out / LORA_FILE))
    (out / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
