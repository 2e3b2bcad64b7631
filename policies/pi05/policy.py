"""The π0.5-style model as hivla policies, plus checkpoint reading and writing.

    policy = load_pi05("policies/checkpoints/small", device="cpu", dtype="fp32")
    high = Pi05HighLevel(policy)     # HighLevelPolicy: plan(obs, context) -> Plan(source="model")
    low = Pi05LowLevel(policy)       # LowLevelPolicy:  act(obs, subtask) -> float32[H, A]

Both adapters share one loaded model. A checkpoint directory holds config.json, model.safetensors,
tokenizer.json and norm_stats.json (never pickle). Anything truncated, missing or mismatched raises
CheckpointError naming the file and the problem.
"""

from __future__ import annotations

import json
import struct
from collections import deque
from pathlib import Path

import numpy as np
import torch

from policies.pi05.configuration import Pi05Config
from policies.pi05.modeling import Pi05Model
from policies.pi05.processor import NormStats, Pi05Processor, load_tokenizer, pad_to
from policies.types import ActionChunk, CorrectionKind, Observation, Plan, PlanContext

CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "norm_stats.json")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CONTEXT_CORRECTIONS = 4  # how many recent corrections the high level reads
# corrections whose words steer the plan; pause/resume/stop/confirm are handled by the loop
PLANNING_KINDS = {CorrectionKind.OVERRIDE, CorrectionKind.NEGATION, CorrectionKind.CONSTRAINT, CorrectionKind.NUDGE}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message says which file and why."""


# ---------------------------------------------------------------------------------------------
# checkpoint files
# ---------------------------------------------------------------------------------------------


def check_safetensors_file(path: Path) -> dict:
    """Validate a safetensors file's header against its size before loading (a truncated file gives a
    clear error here rather than an obscure one inside the loader). Returns the header."""
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{path}: {size} bytes, too short to be a safetensors file (truncated?)")
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if 8 + header_len > size:
            raise CheckpointError(f"{path}: header says {header_len} bytes but the file has {size} (truncated?)")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: unreadable safetensors header ({err})") from err
    data_len = size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        end = info.get("data_offsets", [0, 0])[1]
        if end > data_len:
            raise CheckpointError(f"{path}: tensor {name!r} ends at byte {end} but only {data_len} data bytes "
                                  "are present (truncated file)")
    return header


def load_state_dict_checked(model: torch.nn.Module, path: Path) -> None:
    """Load weights, refusing missing/unexpected keys and shape mismatches with one clear message."""
    from safetensors.torch import load_file

    check_safetensors_file(path)
    state = load_file(str(path))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if wrong:
        problems.append(f"shape mismatches {wrong[:3]}")
    if problems:
        raise CheckpointError(f"{path} does not match config.json: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def save_checkpoint(path: str | Path, model: Pi05Model, tokenizer, norm_stats: NormStats,
                    extra: dict | None = None) -> Path:
    """Write a checkpoint directory. Files are written under temporary names and renamed, so an
    interrupted save never leaves a half-written model.safetensors behind."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}

    def write(name: str, fn) -> None:
        tmp = path / f".{name}.tmp"
        fn(tmp)
        tmp.replace(path / name)

    write("model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt", "hivla": "pi05"}))
    write("config.json", lambda p: model.cfg.save(p))
    write("tokenizer.json", lambda p: tokenizer.save(str(p)))
    write("norm_stats.json", lambda p: norm_stats.save(p))
    if extra:
        write("checkpoint_info.json", lambda p: p.write_text(json.dumps(extra, indent=2) + "\n"))
    return path


def load_checkpoint(path: str | Path) -> tuple[Pi05Model, Pi05Processor]:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    absent = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    if absent:
        raise CheckpointError(f"{path}: checkpoint is missing {absent}")
    try:
        cfg = Pi05Config.load(path / "config.json")
        tokenizer = load_tokenizer(path / "tokenizer.json")
        stats = NormStats.load(path / "norm_stats.json")
        processor = Pi05Processor(cfg, tokenizer, stats)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: {err}") from err
    model = Pi05Model(cfg)
    load_state_dict_checked(model, path / "model.safetensors")
    return model.eval(), processor


# ---------------------------------------------------------------------------------------------
# the policy
# ---------------------------------------------------------------------------------------------


class Pi05Policy:
    """A loaded model + processor with the LeRobot-style inference API."""

    def __init__(self, model: Pi05Model, processor: Pi05Processor, device: str = "cpu", dtype: str = "fp32"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.cfg = model.cfg
        self._queue: deque[np.ndarray] = deque()
        self._queue_subtask: str | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype: str = "fp32") -> "Pi05Policy":
        model, processor = load_checkpoint(path)
        return cls(model, processor, device=device, dtype=dtype)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bf16")

    def _tensor(self, ids: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        arr, mask = pad_to(ids, length, self.cfg.pad_id)
        return torch.from_numpy(arr)[None].to(self.device), torch.from_numpy(mask)[None].to(self.device)

    def _base(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(self.processor.prepare_images(obs.images))[None].to(self.device)
        ids, mask = self._tensor(self.processor.prefix_ids(obs.task, obs.state), self.cfg.prefix_text_len)
        return images, ids, mask

    def reset(self) -> None:
        self._queue.clear()
        self._queue_subtask = None

    @torch.no_grad()
    def generate_plan(self, obs: Observation, context: PlanContext | None = None) -> Plan:
        context = context or PlanContext(task=obs.task)
        corrections = [c.text for c in context.corrections if c.kind in PLANNING_KINDS][-CONTEXT_CORRECTIONS:]
        if self.cfg.context_last == "done":
            last = context.completed_subtasks[-1] if context.completed_subtasks else None
        else:
            last = context.plan_history[-1].subtask if context.plan_history else None
        ctx_ids, ctx_mask = self._tensor(
            self.processor.context_ids(last, corrections), self.cfg.max_context_tokens)
        with self._autocast():
            out = self.model.generate(*self._base(obs), ctx_ids, ctx_mask)
        thought, subtask = self.processor.parse_plan(self.processor.decode(out[0].tolist()))
        return Plan(thought=thought, subtask=subtask, source="model")

    @torch.no_grad()
    def predict_action_chunk(self, obs: Observation, subtask: str) -> ActionChunk:
        """float32 [H, A] in environment units."""
        sub_ids, sub_mask = self._tensor(self.processor.subtask_ids(subtask), self.cfg.max_subtask_tokens)
        with self._autocast():
            actions = self.model.sample_actions(*self._base(obs), sub_ids, sub_mask)
        return self.processor.unnormalize_actions(actions[0].float().cpu().numpy())

    def select_action(self, obs: Observation, subtask: str) -> np.ndarray:
        """One action float32 [A]; a new chunk is predicted when the queue runs dry or the subtask changes."""
        if not self._queue or subtask != self._queue_subtask:
            self._queue = deque(self.predict_action_chunk(obs, subtask))
            self._queue_subtask = subtask
        return self._queue.popleft()


def load_pi05(path: str | Path, device: str = "cpu", dtype: str = "fp32") -> Pi05Policy:
    return Pi05Policy.from_pretrained(path, device=device, dtype=dtype)


class Pi05HighLevel:
    """HighLevelPolicy backed by the model's own text decoding."""

    def __init__(self, policy: Pi05Policy):
        self.policy = policy

    def reset(self) -> None:
        pass

    def plan(self, obs: Observation, context: PlanContext) -> Plan:
        return self.policy.generate_plan(obs, context)


class Pi05LowLevel:
    """LowLevelPolicy backed by the action expert."""

    def __init__(self, policy: Pi05Policy):
        self.policy = policy

    def reset(self) -> None:
        self.policy.reset()

    def act(self, obs: Observation, subtask: str) -> ActionChunk:
        return self.policy.predict_action_chunk(obs, subtask)
