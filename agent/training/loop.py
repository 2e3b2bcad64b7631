"""The one training loop: pi05 training, pi05 fine-tuning, the VLA and hf LoRA all run through it.

    loop = TrainingLoop(LoopSettings(out="runs/x", steps=4000, lr=5e-4, warmup_steps=200, batch_size=32))
    loop = TrainingLoop(settings.loop_settings(log_every=50))  # or from a recipe's RecipeSettings
    ...  # the recipe builds its data and model on loop.device (loading its weights when loop.resuming)
    state = loop.run(Recipe(model=model, batches=sampler, save=save, evaluate=evaluate))

A recipe gives the model, which owns its loss (`model(batch) -> (loss, info)`), a batch sampler, an
evaluation and a save function; the loop does the rest the same way for every recipe: AdamW over
decay / no-decay groups, linear warm-up then cosine decay to a tenth of the peak, bf16 autocast,
gradient clipping, a one-line error on a non-finite loss, train.log (+ a rich progress bar on a
terminal), the evaluation every `eval_every` steps and at the end, and a resumable save every
`save_every_s` seconds, at the end, and on Ctrl-C or SIGTERM. The save is the recipe's loadable
checkpoint plus the loop's own resume state in OUT: train_state.safetensors (optimizer moments) and
trainer_state.json (step, elapsed time, metrics history, whatever the recipe keeps in `loop.state`).

Multi-process goes through `accelerate` (DDP; gloo on the CPU): one process by default, several under
`accelerate launch --multi_gpu --num_processes N` (without GPUs it runs DDP over gloo on the CPU), each
drawing its own part of every batch; only the main process logs, evaluates and saves.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Union

import torch

from policies.checkpoint import CheckpointError

TRAIN_STATE = "train_state.safetensors"
TRAINER_STATE = "trainer_state.json"
# Optimizer moments keyed by the parameter's index in the optimizer (files without it: see load_train_state)
STATE_FORMAT = {"keys": "param-index"}

# What a sampler yields for one optimizer step: a batch, or (weight, batch) pairs whose gradients
# are accumulated (hf models take one example a forward pass)
StepBatch = Union[dict, list]


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside, SIGTERM raises KeyboardInterrupt, so `kill PID` stops a background run (where SIGINT is
    ignored: nohup and `&` jobs) the way Ctrl-C does: the training loop saves a resumable checkpoint."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Logger:
    """Timestamped lines in a log file; `echo` prints them too. Disabled: writes nothing (other processes)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.file = path.open("a", encoding="utf-8") if enabled else None

    def __call__(self, msg: str) -> None:
        if self.file is not None:
            self.file.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
            self.file.flush()

    def echo(self, msg: str) -> None:
        if self.file is not None:
            self(msg)
            print(msg, flush=True)


class TrainProgress:
    """A rich progress bar on a terminal, nothing otherwise (the log file has the numbers)."""

    SHOWN = (("loss", "loss"), ("text", "text_loss"), ("flow", "flow_loss"), ("anchor", "anchor"))

    def __init__(self, total: int, start: int, label: str = "train", enabled: bool = True):
        self.bar = None
        if enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[info]}"))
            self.bar.start()
            self.task = self.bar.add_task(label, total=total, completed=start, info="")

    def update(self, step: int, info: dict) -> None:
        if self.bar is not None:
            shown = [(label, key) for label, key in self.SHOWN if key in info]
            self.bar.update(self.task, completed=step, info=" ".join(f"{label} {info[key]:.3f}" for label, key in shown))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def lr_at(step: int, s) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak (`s`: lr, warmup_steps, steps)."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps))
    return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups of the trainable parameters: weight decay on matrices and kernels, none on
    biases, norms and other vectors (nanoGPT's rule)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def shuffled_batches(indices: torch.Tensor, size: int, g: torch.Generator) -> Iterator[torch.Tensor]:
    """Batches of `size` of `indices`, endlessly, a new permutation each epoch (an epoch's tail is dropped)."""
    perm, pos = torch.randperm(len(indices), generator=g), 0
    while True:
        if pos + size > len(perm):
            perm, pos = torch.randperm(len(indices), generator=g), 0
        yield indices[perm[pos: pos + size]]
        pos += size


# ---------------------------------------------------------------------------------------------
# resume state
# ---------------------------------------------------------------------------------------------


def save_train_state(out: Path, opt: torch.optim.Optimizer, state: dict) -> None:
    from safetensors.torch import save_file

    flat = {}
    for i, st in sorted(opt.state_dict()["state"].items()):
        for k, v in st.items():
            flat[f"{i}.{k}"] = v.detach().cpu().float().reshape(-1) if k == "step" else v.detach().cpu().contiguous()
    tmp = out / f".{TRAIN_STATE}.tmp"
    save_file(flat, str(tmp), metadata=STATE_FORMAT)
    tmp.replace(out / TRAIN_STATE)
    tmp = out / f".{TRAINER_STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out / TRAINER_STATE)


def load_train_state(out: Path, opt: torch.optim.Optimizer) -> dict:
    """Restore the optimizer moments saved in OUT; returns the trainer state (trainer_state.json).

    Files written before STATE_FORMAT numbered the moments by position and were read back into the
    first parameter group only; they are read the same way still, so an older run resumes as it did."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = str(out / TRAIN_STATE)
    with safe_open(path, "pt") as f:
        by_index = (f.metadata() or {}).get("keys") == STATE_FORMAT["keys"]
    flat = load_file(path)
    sd = opt.state_dict()
    n_params = sum(len(g["params"]) for g in sd["param_groups"]) if by_index else len(sd["param_groups"][0]["params"])
    state = {}
    for i in range(n_params):
        keys = {k.split(".", 1)[1]: v for k, v in flat.items() if k.split(".", 1)[0] == str(i)}
        if keys:
            if "step" in keys:
                keys["step"] = keys["step"].reshape(())
            state[i] = keys
    sd["state"] = state
    opt.load_state_dict(sd)
    return json.loads((out / TRAINER_STATE).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------


@dataclass
class LoopSettings:
    out: str
    steps: int
    lr: float
    warmup_steps: int
    batch_size: int  # samples an optimizer step, over all processes (for the counts and the rate)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    clip: float = 1.0
    dtype: str = "fp32"  # "bf16": the forward pass under bf16 autocast
    device: str = "cpu"
    resume: bool = False  # continue from OUT's resume state, when it has one
    stop_at: int | None = None  # end (resumably) at this step; the schedule still runs to `steps`
    eval_every: int = 0  # steps between evaluations (0: at the end only)
    save_every_s: float = 240.0
    log_every: int = 50
    log_file: str = "train.log"
    label: str = "train"
    progress: bool = True
    threads: int | None = None  # torch threads a process (default: the cores shared by the processes)
    settings: dict = field(default_factory=dict)  # the recipe's settings, written at the top of the log


@dataclass(kw_only=True)
class RecipeSettings:
    """What every recipe's settings hold: its data, OUT and the loop's knobs. A recipe's settings
    subclass this, adding their own fields and giving the schedule their own defaults; `loop_settings`
    hands these to the loop, and all of the recipe's settings to the top of its log."""

    data: list[str]
    out: str
    steps: int
    batch_size: int  # samples an optimizer step, over all processes
    lr: float
    warmup_steps: int
    device: str = "cpu"
    dtype: str = "bf16"  # "bf16": the forward pass under bf16 autocast
    resume: bool = False
    save_every_s: float = 240.0
    seed: int = 0
    threads: int | None = None  # torch threads a process (default: the cores shared by the processes)

    def loop_settings(self, **recipe) -> LoopSettings:
        """The loop's settings: these, with `recipe` adding the rest (log_every, label, ...) or replacing one."""
        return LoopSettings(**{
            "out": self.out, "steps": self.steps, "lr": self.lr, "warmup_steps": self.warmup_steps,
            "batch_size": self.batch_size, "dtype": self.dtype, "device": self.device, "resume": self.resume,
            "save_every_s": self.save_every_s, "threads": self.threads, "settings": asdict(self), **recipe})


@dataclass(kw_only=True)
class PresetSettings(RecipeSettings):
    """A model trained from a config preset (pi05, its object read-out, the VLA): these too go to the loop."""

    presets: ClassVar[tuple[str, ...]] = ()  # the --preset names the recipe trains (set by each recipe)
    preset: str
    weight_decay: float = 0.01
    eval_every: int = 1000  # steps between held-out evaluations
    held_out_fraction: float = 0.1  # of the episodes
    stop_at: int | None = None  # end (resumably) at this step; the schedule still runs to `steps`
    overrides: dict = field(default_factory=dict)  # config field -> value, on top of the preset

    def loop_settings(self, **recipe) -> LoopSettings:
        return super().loop_settings(**{"weight_decay": self.weight_decay, "eval_every": self.eval_every,
                                        "stop_at": self.stop_at, **recipe})


@dataclass
class Recipe:
    model: torch.nn.Module  # forward(batch) -> (loss, info: dict[str, float])
    batches: Callable[[int], Iterator[StepBatch]]  # from a step on: this process's batch for each step
    save: Callable[[dict], None]  # a loadable checkpoint of the trained state (main process only)
    evaluate: Callable[[int, bool], dict] | None = None  # (step, final) -> metrics (main process only)
    after_step: Callable[[int], None] | None = None  # after each optimizer step, e.g. an EMA update
    param_groups: list[dict] | None = None  # default: decay_groups(model, weight_decay)


class TrainingLoop:
    """Set up first (accelerate, OUT, the log, the resume state), so the recipe can build its model on
    `device` and load its weights when `resuming`; then `run`."""

    def __init__(self, s: LoopSettings):
        from accelerate import Accelerator

        self.s = s
        self.accelerator = Accelerator(cpu=s.device == "cpu", device_placement=False)
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.main = self.accelerator.is_main_process
        self.device = self.accelerator.device if self.world > 1 else torch.device(s.device)
        self.threads = s.threads or max(1, (os.cpu_count() or 1) // self.world)
        torch.set_num_threads(self.threads)
        self.out = Path(s.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = Logger(self.out / s.log_file, enabled=self.main)
        self.log(f"settings {json.dumps(s.settings or {'out': s.out})}")
        (self.log.echo if self.world > 1 else self.log)(
            f"{self.world} process(es) ({self.accelerator.distributed_type.value}, backend "
            f"{self.accelerator.state.backend or 'none'}), {self.threads} torch thread(s) each")
        self.resuming = s.resume and (self.out / TRAINER_STATE).is_file()
        self.state: dict = {"step": 0, "elapsed_s": 0.0, "samples": 0, "history": []}
        if self.resuming:
            try:
                self.state.update(json.loads((self.out / TRAINER_STATE).read_text(encoding="utf-8")))
            except (OSError, ValueError) as err:
                raise CheckpointError(f"cannot resume from {self.out}: {err}") from err

    def shuffled(self, indices: torch.Tensor, seed: int, step: int) -> Iterator[torch.Tensor]:
        """This process's share of every batch, drawn from `indices` in epochs, from `step` on."""
        g = torch.Generator().manual_seed(seed + step + 7919 * self.rank)  # each process its own draws
        return shuffled_batches(indices, max(1, self.s.batch_size // self.world), g)

    def summary(self) -> dict:
        """What a run did: steps, samples, time, and the last evaluation."""
        st = self.state
        return {"steps": st["step"], "samples": st["samples"], "train_time_s": st["elapsed_s"],
                "samples_per_s": st["samples"] / max(st["elapsed_s"], 1e-9),
                "final_eval": st["history"][-1] if st["history"] else {}}

    @property
    def end(self) -> int:
        return min(self.s.steps, self.s.stop_at or self.s.steps)

    def run(self, recipe: Recipe) -> dict:
        s, state, acc = self.s, self.state, self.accelerator
        opt = torch.optim.AdamW(recipe.param_groups or decay_groups(recipe.model, s.weight_decay), lr=s.lr,
                                betas=s.betas)
        if self.resuming:
            try:
                load_train_state(self.out, opt)
            except (OSError, ValueError, KeyError) as err:
                raise CheckpointError(f"cannot resume from {self.out}: {err}; start again without --resume "
                                      f"in a new --out") from err
            self.log.echo(f"resumed at step {state['step']} ({state['elapsed_s'] / 60:.1f} min trained)")
        model, opt = acc.prepare(recipe.model, opt)
        trainable = [p for p in model.parameters() if p.requires_grad]
        end, ran = self.end, False
        progress = TrainProgress(s.steps, state["step"], s.label, enabled=self.main and s.progress)
        last_save, window, t_window = time.perf_counter(), [], time.perf_counter()
        model.train()
        try:
            with sigterm_as_interrupt():
                batches = recipe.batches(state["step"])
                while state["step"] < end:
                    lr = lr_at(state["step"], s)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    t0 = time.perf_counter()
                    info = self._step(model, opt, next(batches), trainable)
                    if recipe.after_step is not None:
                        recipe.after_step(state["step"])
                    state["elapsed_s"] += time.perf_counter() - t0
                    state["step"] += 1
                    state["samples"] = state.get("samples", 0) + s.batch_size
                    step, ran = state["step"], True
                    window.append(info)
                    progress.update(step, info)
                    if step % s.log_every == 0 or step == end:
                        avg = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                        rate = len(window) * s.batch_size / (time.perf_counter() - t_window)
                        self.log(f"step {step} lr {lr:.2e} " + " ".join(f"{k} {v:.4f}" for k, v in avg.items())
                                 + f" samples/s {rate:.1f}")
                        window, t_window = [], time.perf_counter()
                    if (s.eval_every and step % s.eval_every == 0) or step == end:
                        self._evaluate(recipe, step, step == end)
                        t_window = time.perf_counter()
                    if time.perf_counter() - last_save > s.save_every_s or step == end:
                        self._save(recipe, opt)
                        last_save = time.perf_counter()
                if not ran and not self.resuming:  # a fresh run of no steps still ends evaluated and saved
                    self._evaluate(recipe, state["step"], True)
                    self._save(recipe, opt)
        except KeyboardInterrupt:
            self.log.echo(f"interrupted at step {state['step']}; saving a resumable checkpoint in {self.out}")
            self._save(recipe, opt)
            raise
        finally:
            progress.close()
        return state

    def _step(self, model, opt, batch: StepBatch, trainable: list) -> dict:
        """Forward (bf16 autocast if asked), backward, clip, step; the info averaged over micro-batches."""
        parts = batch if isinstance(batch, list) else [(1.0, batch)]
        opt.zero_grad(set_to_none=True)
        info: dict[str, float] = {}
        for i, (weight, part) in enumerate(parts):
            # processes exchange gradients once a step, after the last micro-batch
            sync = contextlib.nullcontext() if i == len(parts) - 1 else self.accelerator.no_sync(model)
            with sync:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.s.dtype == "bf16"):
                    loss, part_info = model(part)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {self.state['step']}; lower --lr")
                self.accelerator.backward(loss * weight)
            for k, v in part_info.items():
                info[k] = info.get(k, 0.0) + weight * v
        info["grad_norm"] = float(self.accelerator.clip_grad_norm_(trainable, self.s.clip))
        opt.step()
        return info

    def _evaluate(self, recipe: Recipe, step: int, final: bool) -> None:
        if recipe.evaluate is None:
            return
        if self.main:
            metrics = recipe.evaluate(step, final)
            if metrics:
                metrics["step"] = step
                self.state["history"].append(metrics)
                self.log.echo("eval " + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in metrics.items()))
        self.accelerator.wait_for_everyone()

    def _save(self, recipe: Recipe, opt) -> None:
        self.accelerator.wait_for_everyone()
        if self.main:
            recipe.save(self.state)
            save_train_state(self.out, opt, self.state)
        self.accelerator.wait_for_everyone()
