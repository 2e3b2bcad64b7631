"""Checkpoints of every model in policies/ (pi05, the VLA): reading their files safely (safetensors only,
never pickle; anything truncated, missing or mismatched is one CheckpointError naming the file and the
problem), the config dataclass as config.json and from its presets, and the loaded policy's device and dtype.

A checkpoint directory holds CHECKPOINT_FILES: the config, the weights, the tokenizer and the norm stats.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Self, TypeVar

import torch

CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "norm_stats.json")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message says which file and why."""


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


def warm_start(model: torch.nn.Module, weights: Path) -> list[str]:
    """Copy every tensor of `weights` whose name and shape the model shares; returns the names of the
    model's tensors left as initialised (e.g. a new vision stem, a new query), so the log says what is new."""
    from safetensors.torch import load_file

    check_safetensors_file(weights)
    saved = load_file(str(weights))
    own = model.state_dict()
    shared = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    if not shared:
        raise CheckpointError(f"{weights}: no tensor matches this model; is it a checkpoint of the same kind?")
    model.load_state_dict(shared, strict=False)
    return sorted(k for k in own if k not in shared)


def save_checkpoint_dir(path: str | Path, model: torch.nn.Module, kind: str, files: dict[str, Callable[[Path], None]],
                        extra: dict | None = None) -> Path:
    """Write model.safetensors (fp32, tagged with the model `kind`), then each of `files` (name ->
    writer of that file) and checkpoint_info.json. Every file is written under a temporary name and
    renamed, so an interrupted save never leaves a half-written file behind."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}

    def write(name: str, fn: Callable[[Path], None]) -> None:
        tmp = path / f".{name}.tmp"
        fn(tmp)
        tmp.replace(path / name)

    write("model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt", "hivla": kind}))
    for name, fn in files.items():
        write(name, fn)
    if extra:
        write("checkpoint_info.json", lambda p: p.write_text(json.dumps(extra, indent=2) + "\n"))
    return path


def require_files(path: str | Path, names: tuple[str, ...]) -> Path:
    """The checkpoint directory, or a CheckpointError naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    absent = [name for name in names if not (path / name).is_file()]
    if absent:
        raise CheckpointError(f"{path}: checkpoint is missing {absent}")
    return path


# ---------------------------------------------------------------------------------------------
# the config: config.json and the presets
# ---------------------------------------------------------------------------------------------


class ConfigFile:
    """A model's config dataclass as its checkpoint's config.json: tuples are written as lists and read
    back as tuples; an unknown field, a file that is not a JSON object or a value `check_fields`
    refuses is one ValueError naming it, and what is read is validated (the subclass's `validate`)."""

    @classmethod
    def check_fields(cls, data: dict) -> None:
        """Refuse a value of config.json before the config is built from it (none by default)."""

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> Self:
        fields = dataclasses.fields(cls)
        unknown = sorted(set(data) - {f.name for f in fields})
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}")
        data = dict(data)
        cls.check_fields(data)
        for f in fields:
            if isinstance(f.default, tuple) and f.name in data:
                data[f.name] = tuple(data[f.name])
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Self:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of config fields, got {type(data).__name__}")
        return cls.from_dict(data)


Config = TypeVar("Config", bound=ConfigFile)


def preset_config(presets: dict[str, Callable[[], Config]], preset: str, overrides: dict) -> Config:
    """The config of one of `presets` (name -> its config) with `overrides` (field -> value), validated."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(presets)}")
    cfg = presets[preset]()
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise ValueError(f"unknown config field {key!r}")
        setattr(cfg, key, value)
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------------------------
# a loaded checkpoint
# ---------------------------------------------------------------------------------------------


def load_checkpoint_dir(path: str | Path, config_cls: type[ConfigFile], model_cls: type[torch.nn.Module],
                        processor_cls) -> tuple[torch.nn.Module, object]:
    """(model in eval mode, processor) from a checkpoint directory; `processor_cls.from_dir(path, cfg)`
    reads the tokenizer and the norm stats (policies.pi05.processor.BaseProcessor)."""
    path = require_files(path, CHECKPOINT_FILES)
    try:
        cfg = config_cls.load(path / "config.json")
        processor = processor_cls.from_dir(path, cfg)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: {err}") from err
    model = model_cls(cfg)
    load_state_dict_checked(model, path / "model.safetensors")
    return model.eval(), processor


class LoadedPolicy:
    """A loaded model + processor on `device` in `dtype` (bf16: the forward passes under autocast); the
    pi05 and VLA policies add the LeRobot-style inference API."""

    def __init__(self, model: torch.nn.Module, processor, device: str = "cpu", dtype: str = "fp32"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.cfg = model.cfg

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bf16")
