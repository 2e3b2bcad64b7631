"""LoRA fine-tuning of an `hf:` high level (a local transformers VLM or LM) on an SFT export.

    settings = HfFinetuneSettings(base="models/qwen", data=["exports/round1"], out="runs/qwen_round1")
    summary = finetune_hf(settings)        # then: hivla coach --high-level hf:runs/qwen_round1

Each example is rendered by the planner's own `HfHighLevel.encode` (prompts/hf_planner.toml through
the model's chat template, the cameras attached for a VLM), the same function that prompts the model
in the loop, with the recorded plan ("thought So: subtask") as the assistant turn; the loss falls on
those answer tokens (and the template's end-of-turn), weighted by the export's `weight` column. Only
LoRA adapters (peft) train; the base weights stay in --dtype (bf16 halves their memory), the adapters
in fp32. One example a forward pass (VLM inputs differ in shape), `batch_size` of them accumulated per
optimizer step; under `accelerate launch`, each process accumulates its share of them (DDP).

OUT is what peft users expect: adapter_config.json (its base_model_name_or_path is the base model's
absolute path) + adapter_model.safetensors from `save_pretrained`, plus the tokenizer or processor with
its chat template. `hf:OUT` loads the base, applies the adapter and merges it; plain peft loads it with
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), OUT)`. With `merge`, OUT/merged
is also written: the merged weights as a standalone transformers model directory (`hf:OUT/merged`).
The loop is agent/training/loop.py's, as for every recipe. Resumable: every save also writes the
optimizer state (train_state.safetensors) and the step (trainer_state.json), so `--resume` continues
the same schedule; Ctrl-C or SIGTERM saves first.
Evaluation, before and after: the mean answer loss on a fixed sample of training and validation
examples, and plan agreement (the decoded subtask is the recorded one) on the validation examples
(the training ones when there is no validation split).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from agent.training.corrections import CorrectionDataError
from agent.training.sft_data import SftExample, load_sft_export
from agent.training.loop import TRAINER_STATE, Recipe, RecipeSettings, TrainingLoop
from policies.grammar import normalize
from policies.hf.loading import ADAPTER_CONFIG, HfModelError, adapter_base
from policies.hf.planner import HfHighLevel
from policies.planning import PlanParseError, parse_plan

SUMMARY_FILE = "hf_finetune.json"
MERGED_DIR = "merged"


@dataclass(kw_only=True)
class HfFinetuneSettings(RecipeSettings):
    """The fields every run has (data, out, device, dtype, resume, seed, ...) are RecipeSettings'
    (agent/training/loop.py); the schedule's defaults are this recipe's."""

    base: str  # a transformers model directory (or an adapter directory from an earlier fine-tune)
    data: list[str]  # SFT exports
    steps: int = 1000
    batch_size: int = 32  # examples per optimizer step (accumulated, one a forward pass)
    lr: float = 3e-4
    warmup_steps: int = 20
    lora_rank: int = 16
    lora_alpha: float | None = None  # default 2 x rank
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"  # peft's target_modules: "all-linear" or comma-separated module names
    merge: bool = False
    eval_samples: int = 32

    def validate(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError("--steps must be >= 0 and --batch-size >= 1")
        if self.lr <= 0 or self.lora_rank < 1 or self.eval_samples < 0 or self.warmup_steps < 0:
            raise ValueError("--lr must be positive, --lora-rank at least 1, --eval-samples and --warmup-steps at least 0")
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"--dtype must be fp32 or bf16, got {self.dtype!r}")
        out = Path(self.out)
        if (out / ADAPTER_CONFIG).is_file() and not self.resume:
            raise ValueError(f"--out {out} holds a fine-tune already; pass --resume to continue it, or another --out")
        if (out / ADAPTER_CONFIG).is_file() and not (out / TRAINER_STATE).is_file():
            raise ValueError(f"--out {out} holds an adapter without hivla's {TRAINER_STATE}, so it cannot be resumed; "
                             f"use another --out (or --base hf:{out} to train on top of it)")


def lora_config(s: HfFinetuneSettings):
    from peft import LoraConfig

    targets = s.lora_targets if s.lora_targets == "all-linear" else [t.strip() for t in s.lora_targets.split(",") if t.strip()]
    return LoraConfig(r=s.lora_rank, lora_alpha=s.lora_alpha or 2 * s.lora_rank, lora_dropout=s.lora_dropout,
                      target_modules=targets, bias="none")


def _import_peft():
    try:
        import peft
    except ImportError as err:
        raise HfModelError("fine-tuning an hf: model trains LoRA adapters with peft: pip install -e '.[lora]'") from err
    return peft


def with_adapters(planner: HfHighLevel, s: HfFinetuneSettings, resuming: bool) -> torch.nn.Module:
    """The planner's model wrapped with trainable LoRA adapters: new ones, or OUT's when resuming."""
    peft = _import_peft()
    if resuming:
        recorded = adapter_base(Path(s.out)).resolve()
        if recorded != Path(s.base).resolve():
            raise ValueError(f"--resume: {s.out} was fine-tuned from {recorded}, not {s.base}; pass --base hf:{recorded}")
        model = peft.PeftModel.from_pretrained(planner.model, s.out, is_trainable=True)
    else:
        try:
            model = peft.get_peft_model(planner.model, lora_config(s))
        except ValueError as err:  # e.g. target modules the model does not have
            raise HfModelError(f"cannot add LoRA adapters to {s.base}: {str(err).splitlines()[0]}; "
                               f"check --lora-targets") from err
    model.to(planner.device)
    return model


# ---------------------------------------------------------------------------------------------
# the loss, and the evaluation
# ---------------------------------------------------------------------------------------------


def example_inputs(planner: HfHighLevel, e: SftExample) -> dict:
    """One training sequence on the planner's device: the inference prompt + the recorded answer, with labels."""
    images = e.frames() if planner.is_vlm else {}
    return planner.to_device(planner.encode(images, e.context, e.answer))


def example_loss(planner: HfHighLevel, e: SftExample) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of one example (transformers shifts the labels)."""
    return planner.model(**example_inputs(planner, e)).loss.float()


class AnswerLoss(torch.nn.Module):
    """The planner's model as the loop trains it: `forward(example_inputs(...)) -> (loss, info)`, the
    loss that transformers computes on the answer tokens (a module, so the loop can prepare and train it)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: dict) -> tuple[torch.Tensor, dict]:
        loss = self.model(**inputs).loss.float()
        return loss, {"loss": float(loss.detach())}


@torch.no_grad()
def mean_loss(planner: HfHighLevel, examples: list[SftExample]) -> float | None:
    if not examples:
        return None
    planner.model.eval()
    losses = [float(example_loss(planner, e)) * e.weight for e in examples]
    planner.model.train()
    return sum(losses) / sum(e.weight for e in examples)


@torch.no_grad()
def plan_agreement(planner: HfHighLevel, examples: list[SftExample]) -> float | None:
    """Share of examples where the model's greedy answer parses to the recorded subtask."""
    if not examples:
        return None
    planner.model.eval()
    hits = []
    for e in examples:
        try:
            parsed = parse_plan(planner.generate(e.frames() if planner.is_vlm else {}, e.context)).subtask
        except PlanParseError:
            parsed = None
        hits.append(parsed is not None and normalize(parsed) == normalize(e.subtask))
    planner.model.train()
    return sum(hits) / len(hits)


def evaluate(planner: HfHighLevel, train_eval: list[SftExample], held_eval: list[SftExample]) -> dict:
    return {"train_loss": mean_loss(planner, train_eval), "validation_loss": mean_loss(planner, held_eval),
            "plan_agreement": plan_agreement(planner, held_eval or train_eval),
            "agreement_on": "validation" if held_eval else "train"}


def _fmt_eval(m: dict) -> str:
    def num(v, pct=False):
        return "-" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.4f}")

    return (f"answer loss train {num(m['train_loss'])}, validation {num(m['validation_loss'])}; "
            f"plan agreement ({m['agreement_on']}) {num(m['plan_agreement'], pct=True)}")


# ---------------------------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------------------------


def _sample(examples: list[SftExample], n: int, seed: int) -> list[SftExample]:
    if len(examples) <= n:
        return list(examples)
    keep = np.random.default_rng(seed).choice(len(examples), n, replace=False)
    return [examples[i] for i in sorted(keep)]


def finetune_hf(s: HfFinetuneSettings) -> dict:
    s.validate()
    _import_peft()  # a missing peft is said before the slow part
    if s.threads:
        torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    examples = load_sft_export(s.data)  # before the model: bad data is refused without the slow load
    train = [e for e in examples if e.split == "train"]
    held = [e for e in examples if e.split != "train"]
    if not train:
        raise CorrectionDataError(f"--data {' '.join(s.data)}: every usable row is in the validation split; "
                                  f"export with a smaller --val-fraction")
    from accelerate import PartialState

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1  # under accelerate launch: this process's device
    planner = HfHighLevel(s.base, device=str(PartialState(cpu=s.device == "cpu").device) if several else s.device,
                          dtype=s.dtype)
    out = Path(s.out)  # made only once the data and the model are known to load
    loop = TrainingLoop(s.loop_settings(
        # the base weights are in --dtype already and the adapters train in fp32: no autocast
        dtype="fp32", resume=s.resume and (out / ADAPTER_CONFIG).is_file(), log_every=10, log_file="finetune.log",
        label="finetune", threads=s.threads or torch.get_num_threads()))
    log, state, main = loop.log, loop.state, loop.main
    model = with_adapters(planner, s, loop.resuming)
    planner.model = model  # encode/generate now run through the adapters
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    long = sum(len(planner.tokenizer(e.answer)["input_ids"]) > planner.max_new_tokens for e in train)
    log.echo(f"{s.base}: {'VLM' if planner.is_vlm else 'LM'}, {n_trainable / 1e6:.2f}M LoRA parameters of "
             f"{n_total / 1e6:.1f}M, {s.dtype} on {planner.device}; {len(train)} train / {len(held)} validation "
             f"examples" + (f"; {long} answers are longer than the planner's max_new_tokens "
                             f"({planner.max_new_tokens}, prompts/hf_planner.toml), so it cannot finish them" if long else ""))
    train_eval = _sample(train, s.eval_samples, s.seed + 1)
    held_eval = _sample(held, s.eval_samples, s.seed + 2)
    if main and "before" not in state:
        state["before"] = evaluate(planner, train_eval, held_eval)
        log.echo("before: " + _fmt_eval(state["before"]))
    state["trainable_parameters"] = n_trainable

    def batches(step: int) -> Iterator[list]:
        """This process's share of `batch_size` examples a step, one a forward pass, weighted by the export."""
        rng = np.random.default_rng(s.seed * 1000 + step + 7919 * loop.rank)
        while True:
            batch = [train[i] for i in rng.integers(0, len(train), max(1, s.batch_size // loop.world))]
            total = sum(e.weight for e in batch)
            yield [(e.weight / total, example_inputs(planner, e)) for e in batch]

    def after(step: int, final: bool) -> dict:
        if final:
            state["after"] = evaluate(planner, train_eval, held_eval)
            log.echo("after:  " + _fmt_eval(state["after"]))
        return {}

    loop.run(Recipe(model=AnswerLoss(model), batches=batches, evaluate=after, param_groups=[
        {"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": 0.0}],
        save=lambda state: _save(out, model, planner, s)))
    summary = {k: state.get(k) for k in ("step", "elapsed_s", "before", "after", "trainable_parameters")}
    summary.update(base=str(Path(s.base).resolve()), train_examples=len(train), validation_examples=len(held),
                   processes=loop.world)
    if not main:
        return summary
    if s.merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(out / MERGED_DIR)
        planner.processor.save_pretrained(out / MERGED_DIR)
        log.echo(f"merged weights: {out / MERGED_DIR} (hf:{out / MERGED_DIR} needs no adapter)")
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.echo(f"adapter: {out} (use it as --high-level hf:{out})")
    return summary


def _save(out: Path, model, planner: HfHighLevel, s: HfFinetuneSettings) -> None:
    """The adapter as peft writes it (naming the base by its absolute path) and the tokenizer or
    processor beside it (its chat template is part of what was trained); the loop adds its resume state."""
    model.peft_config["default"].base_model_name_or_path = str(Path(s.base).resolve())
    model.save_pretrained(out)
    planner.processor.save_pretrained(out)
