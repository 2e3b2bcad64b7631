"""A local transformers model directory as the high level: `hf:PATH`.

    high = HfHighLevel("models/my-vlm", device="cpu", dtype="fp32")
    plan = high.plan(obs, context)      # Plan(thought, subtask): the answer parsed at its last "So:"

A directory whose config has a `vision_config` is loaded as a VLM (AutoModelForImageTextToText +
AutoProcessor) and sees the cameras named in prompts/hf_planner.toml; any other as a text-only LM
(AutoModelForCausalLM + AutoTokenizer). The prompt (task, what was done, the subtask in force, the
person's corrections) is written from prompts/hf_planner.toml and rendered by the model's own chat
template; decoding is greedy. Nothing is downloaded: everything loads with local_files_only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from policies.pi05.policy import CONTEXT_CORRECTIONS, PLANNING_KINDS
from policies.pi05.processor import PLAN_SEPARATOR
from policies.types import Observation, Plan, PlanContext
from prompts import load as load_prompt

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class HfModelError(ValueError):
    """A directory that is not a usable local transformers model (the message names the fix)."""


def parse_answer(text: str) -> tuple[str, str] | None:
    """'thought So: subtask' -> (thought, subtask) at the last 'So:' (case-insensitive); the subtask
    is the first line after it without trailing punctuation. None when there is no subtask to read."""
    marker = PLAN_SEPARATOR.strip().lower()
    idx = text.lower().rfind(marker)
    if idx < 0:
        return None
    lines = text[idx + len(marker):].strip().splitlines()
    subtask = lines[0].strip().strip(" .!\"'").strip() if lines else ""
    if not subtask:
        return None
    return text[:idx].strip(), subtask


def planner_fields(context: PlanContext) -> dict[str, str]:
    """The context as the prompt's fields: what was done, the subtask in force, what the person said."""
    prompt = load_prompt("hf_planner")
    corrections = [c.text for c in context.corrections if c.kind in PLANNING_KINDS][-CONTEXT_CORRECTIONS:]
    return {
        "task": context.task,
        "done": ", ".join(context.completed_subtasks) or prompt["nothing"],
        "current": context.plan_history[-1].subtask if context.plan_history else prompt["nothing"],
        "corrections": " | ".join(f'"{c}"' for c in corrections) or prompt["no_corrections"],
    }


class HfHighLevel:
    """HighLevelPolicy over a local transformers VLM or LM."""

    def __init__(self, path: str | Path, device: str = "cpu", dtype: str = "fp32", prompt: str = "hf_planner"):
        from transformers import AutoConfig

        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise HfModelError(f"{self.path} is not a transformers model directory (no config.json); "
                               f"`save_pretrained` a model (and its tokenizer or processor) there")
        if dtype not in DTYPES:
            raise HfModelError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.prompt = load_prompt(prompt)
        self.device = torch.device(device)
        try:
            config = AutoConfig.from_pretrained(self.path, local_files_only=True)
            self.is_vlm = getattr(config, "vision_config", None) is not None
            if self.is_vlm:
                from transformers import AutoModelForImageTextToText, AutoProcessor

                self.processor = AutoProcessor.from_pretrained(self.path, local_files_only=True)
                self.tokenizer = self.processor.tokenizer
                model = AutoModelForImageTextToText.from_pretrained(self.path, local_files_only=True, dtype=DTYPES[dtype])
            else:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                self.processor = self.tokenizer
                model = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True, dtype=DTYPES[dtype])
        except (OSError, ValueError, KeyError) as err:
            raise HfModelError(f"cannot load {self.path} as a transformers {'VLM' if getattr(self, 'is_vlm', False) else 'model'}: "
                               f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
        if not getattr(self.processor, "chat_template", None) and not getattr(self.tokenizer, "chat_template", None):
            raise HfModelError(f"{self.path} has no chat template; set `tokenizer.chat_template` (or the "
                               f"processor's) and save it there")
        self.model = model.to(self.device).eval()
        self.max_new_tokens = int(self.prompt.get("max_new_tokens", 48))
        self.cameras = tuple(self.prompt.get("cameras", ("front", "wrist")))
        self.last_answer = ""  # the model's raw text, for the log and for people
        self.last_error: str | None = None

    def reset(self) -> None:
        self.last_answer, self.last_error = "", None

    def messages(self, obs: Observation, context: PlanContext) -> list[dict]:
        p = self.prompt
        cameras = p["with_images"].format(names=" and ".join(self.cameras)) if self.is_vlm else p["without_images"]
        text = p["user"].format(instructions=p["instructions"], cameras=cameras, **planner_fields(context))
        if not self.is_vlm:
            return [{"role": "user", "content": text}]
        content = [{"type": "image", "image": np.ascontiguousarray(obs.images[cam])} for cam in self.cameras]
        return [{"role": "user", "content": content + [{"type": "text", "text": text}]}]

    @torch.no_grad()
    def answer(self, obs: Observation, context: PlanContext) -> str:
        inputs = self.processor.apply_chat_template(self.messages(obs, context), add_generation_prompt=True,
                                                    tokenize=True, return_dict=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad_id)
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()

    def plan(self, obs: Observation, context: PlanContext) -> Plan:
        text = self.answer(obs, context)
        self.last_answer = text
        parsed = parse_answer(text)
        if parsed is not None:
            self.last_error = None
            return Plan(thought=parsed[0], subtask=parsed[1], source="model")
        # No silent fallback: the thought says the answer was unreadable and what is kept instead.
        keep = context.plan_history[-1].subtask if context.plan_history else context.task
        shown = " ".join(text.split())[:80]
        self.last_error = self.prompt["unparsed"].format(answer=shown, subtask=keep)
        return Plan(thought=self.last_error, subtask=keep, source="model")
