"""Load what an `hf:PATH` names: a local transformers model directory, or a LoRA adapter on one.

    loaded = load_local_model("models/my-vlm", dtype="bf16")
    loaded.model, loaded.processor, loaded.tokenizer, loaded.is_vlm

A model directory (config.json) whose config has a `vision_config` loads as a VLM
(AutoModelForImageTextToText + AutoProcessor), any other as a text-only LM (AutoModelForCausalLM +
AutoTokenizer). An adapter directory (adapter_config.json, what peft's `save_pretrained` writes, e.g.
`hivla finetune --base hf:DIR`) loads its base from the adapter config's `base_model_name_or_path`,
applies the adapter and merges it (inference then costs what the base costs); its tokenizer or
processor, when saved beside the adapter, wins over the base's (it carries the chat template the
adapter was trained with). Nothing is downloaded: everything loads with local_files_only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ADAPTER_CONFIG = "adapter_config.json"


class HfModelError(ValueError):
    """A directory that is not a usable local transformers model (the message names the fix)."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object  # the AutoProcessor of a VLM, the tokenizer itself for an LM
    tokenizer: object
    is_vlm: bool
    base: Path  # the transformers model directory under any adapters


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def adapter_base(path: Path) -> Path:
    """The base model directory an adapter's config names (a relative path is read from the working
    directory, as peft reads it)."""
    try:
        base = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as err:
        raise HfModelError(f"{path / ADAPTER_CONFIG} is unreadable ({err}); write the adapter again with "
                           f"peft's save_pretrained") from err
    if not base:
        raise HfModelError(f"{path / ADAPTER_CONFIG} names no base model; set base_model_name_or_path to the "
                           f"base model's directory")
    base = Path(base)
    if not base.is_dir():
        raise HfModelError(f"{path} is a LoRA adapter of {base}, which is not on disk; put the base model "
                           f"there or set base_model_name_or_path in {path / ADAPTER_CONFIG}")
    return base


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def load_local_model(path: str | Path, dtype: str = "fp32") -> LoadedModel:
    path = Path(path)
    if dtype not in DTYPES:
        raise HfModelError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if is_adapter_dir(path):
        return _load_adapter(path, dtype)
    if not (path / "config.json").is_file():
        raise HfModelError(f"{path} is not a transformers model directory (no config.json); "
                           f"`save_pretrained` a model (and its tokenizer or processor) there")
    from transformers import AutoConfig

    is_vlm = False
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        is_vlm = getattr(config, "vision_config", None) is not None
        processor, tokenizer = _load_processor(path, is_vlm)
        if is_vlm:
            from transformers import AutoModelForImageTextToText as Auto
        else:
            from transformers import AutoModelForCausalLM as Auto
        model = Auto.from_pretrained(path, local_files_only=True, dtype=DTYPES[dtype])
    except (OSError, ValueError, KeyError) as err:
        raise HfModelError(f"cannot load {path} as a transformers {'VLM' if is_vlm else 'model'}: "
                           f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    return LoadedModel(model, processor, tokenizer, is_vlm, path)


def _load_processor(path: Path, is_vlm: bool):
    if is_vlm:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        return processor, processor.tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return tokenizer, tokenizer


def _load_adapter(path: Path, dtype: str) -> LoadedModel:
    try:
        from peft import PeftModel
    except ImportError as err:
        raise HfModelError(f"{path} is a LoRA adapter, which needs peft: pip install -e '.[lora]'") from err
    loaded = load_local_model(adapter_base(path), dtype)  # the base may itself be an adapter (a later round)
    try:
        loaded.model = PeftModel.from_pretrained(loaded.model, path, local_files_only=True).merge_and_unload()
        if _has_tokenizer(path):
            loaded.processor, loaded.tokenizer = _load_processor(path, loaded.is_vlm)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise HfModelError(f"cannot apply the LoRA adapter {path} to {loaded.base}: "
                           f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    return loaded
