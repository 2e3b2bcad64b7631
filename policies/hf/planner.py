"""A local transformers model directory as the high level: `hf:PATH`.

    high = HfHighLevel("models/my-vlm", device="cpu", dtype="fp32")
    plan = high.plan(obs, context)      # Plan(thought, subtask): the answer parsed at its last "So:"

A directory whose config has a `vision_config` is loaded as a VLM (AutoModelForImageTextToText +
AutoProcessor) and sees the cameras named in prompts/hf_planner.toml; any other as a text-only LM
(AutoModelForCausalLM + AutoTokenizer); a LoRA adapter directory (what `hivla finetune --base hf:DIR`
writes) as its base with the adapter merged (policies/hf/loading.py). The prompt (task, what was
done, the subtask in force, the person's corrections) is written from prompts/hf_planner.toml and
rendered by the model's own chat template; decoding is greedy. `encode` is that rendering, for
inference and for fine-tuning alike (with an answer it also returns the labels). Nothing is
downloaded: everything loads with local_files_only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from policies.hf.loading import DTYPES, HfModelError, load_local_model
from policies.planning import PlannerContext, PlanParseError, build_planner_context, parse_plan
from policies.types import Observation, Plan, PlanContext
from prompts import load as load_prompt

__all__ = ["DTYPES", "HfHighLevel", "HfModelError", "planner_fields"]
IGNORE_INDEX = -100  # transformers' label for tokens without loss


def planner_fields(ctx: PlannerContext) -> dict[str, str]:
    """The context as the prompt's fields: what was done, the subtask in force, what the person said,
    the rules remembered for the session, the facts in force."""
    prompt = load_prompt("hf_planner")
    return {
        "task": ctx.task,
        "done": ", ".join(ctx.done) or prompt["nothing"],
        "current": ctx.in_force or prompt["nothing"],
        "corrections": " | ".join(f'"{c}"' for c in ctx.texts) or prompt["no_corrections"],
        # a line only when rules are remembered: a context without memory reads as it always did
        "memory": prompt["memory_line"].format(rules=" | ".join(f'"{m}"' for m in ctx.memory)) if ctx.memory else "",
        "facts": prompt["facts_line"].format(facts="; ".join(f.phrase() for f in ctx.facts)) if ctx.facts else "",
    }


class HfHighLevel:
    """HighLevelPolicy over a local transformers VLM or LM."""

    def __init__(self, path: str | Path, device: str = "cpu", dtype: str = "fp32", prompt: str = "hf_planner"):
        self.path = Path(path)
        loaded = load_local_model(self.path, dtype)
        self.is_vlm, self.processor, self.tokenizer = loaded.is_vlm, loaded.processor, loaded.tokenizer
        if not getattr(self.processor, "chat_template", None) and not getattr(self.tokenizer, "chat_template", None):
            raise HfModelError(f"{self.path} has no chat template; set `tokenizer.chat_template` (or the "
                               f"processor's) and save it there")
        self.prompt = load_prompt(prompt)
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()
        self.max_new_tokens = int(self.prompt.get("max_new_tokens", 48))
        self.cameras = tuple(self.prompt.get("cameras", ("front", "wrist")))
        self.last_answer = ""  # the model's raw text, for the log and for people
        self.last_error: str | None = None

    def reset(self) -> None:
        self.last_answer, self.last_error = "", None

    def messages(self, images: Mapping[str, np.ndarray], context: PlanContext | PlannerContext) -> list[dict]:
        """The user turn: the prompt's text and, for a VLM, the images of `self.cameras` in that order.
        `context` is the loop's PlanContext or the PlannerContext built from it (as a session records it)."""
        p = self.prompt
        if isinstance(context, PlanContext):
            context = build_planner_context(context)
        cameras = p["with_images"].format(names=" and ".join(self.cameras)) if self.is_vlm else p["without_images"]
        text = p["user"].format(instructions=p["instructions"], cameras=cameras, **planner_fields(context))
        if not self.is_vlm:
            return [{"role": "user", "content": text}]
        missing = [cam for cam in self.cameras if cam not in images]
        if missing:
            raise HfModelError(f"the hf planner prompt attaches the {', '.join(self.cameras)} cameras, but "
                               f"{', '.join(missing)} is missing; set `cameras` in prompts/hf_planner.toml")
        content = [{"type": "image", "image": np.ascontiguousarray(images[cam])} for cam in self.cameras]
        return [{"role": "user", "content": content + [{"type": "text", "text": text}]}]

    def encode(self, images: Mapping[str, np.ndarray], context: PlanContext | PlannerContext, answer: str | None = None) -> dict:
        """The model's inputs (CPU tensors, batch of one) for the prompt at this decision, rendered by the
        chat template with the generation prompt. With `answer`: the prompt followed by the answer as
        the assistant turn, and `labels` that ignore the prompt (the loss falls on the answer and the
        end-of-turn the template closes it with, so the model learns to stop)."""
        messages = self.messages(images, context)
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt")
        if answer is None:
            return dict(prompt)
        turn = [{"type": "text", "text": answer}] if self.is_vlm else answer
        full = dict(self.processor.apply_chat_template(messages + [{"role": "assistant", "content": turn}],
                                                       tokenize=True, return_dict=True, return_tensors="pt"))
        n = prompt["input_ids"].shape[1]
        if full["input_ids"].shape[1] <= n or not torch.equal(full["input_ids"][0, :n], prompt["input_ids"][0]):
            raise HfModelError(f"{self.path}'s chat template does not render a conversation as its generation "
                               f"prompt followed by the answer, so answer tokens cannot be told apart; use a "
                               f"template whose generation prompt is a prefix of the answered conversation")
        labels = full["input_ids"].clone()
        labels[:, :n] = IGNORE_INDEX
        full["labels"] = labels
        return full

    def to_device(self, inputs: dict) -> dict:
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def answer(self, obs: Observation, context: PlanContext) -> str:
        return self.generate(obs.images, context)

    @torch.no_grad()
    def generate(self, images: Mapping[str, np.ndarray], context: PlanContext | PlannerContext) -> str:
        """The model's greedy answer to the prompt at (images, context)."""
        inputs = self.to_device(self.encode(images, context))
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad_id)
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()

    def plan(self, obs: Observation, context: PlanContext) -> Plan:
        text = self.answer(obs, context)
        self.last_answer = text
        try:
            plan = parse_plan(text)
        except PlanParseError:
            pass
        else:
            self.last_error = None
            return plan
        # No silent fallback: the thought says the answer was unreadable and what is kept instead.
        keep = context.plan_history[-1].subtask if context.plan_history else context.task
        shown = " ".join(text.split())[:80]
        self.last_error = self.prompt["unparsed"].format(answer=shown, subtask=keep)
        return Plan(thought=self.last_error, subtask=keep, source="model")
