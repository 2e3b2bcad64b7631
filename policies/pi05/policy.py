"""The π0.5-style model as hivla policies, plus checkpoint reading and writing.

    policy = load_pi05("policies/checkpoints/small", device="cpu", dtype="fp32")
    high = Pi05HighLevel(policy)     # HighLevelPolicy: plan(obs, context) -> Plan(source="model")
    low = Pi05LowLevel(policy)       # LowLevelPolicy:  act(obs, subtask) -> float32[H, A]

Both adapters share one loaded model. A checkpoint directory holds config.json, model.safetensors,
tokenizer.json and norm_stats.json (never pickle). Anything truncated, missing or mismatched raises
CheckpointError naming the file and the problem.
"""

from __future__ import annotations

from pathlib import Path

import torch

from policies.checkpoint import (  # noqa: F401 (CheckpointError and the checks are re-exported)
    CheckpointError, LoadedPolicy, check_safetensors_file, load_checkpoint_dir,
    load_state_dict_checked, require_files, save_checkpoint_dir,
)
from policies.pi05.configuration import Pi05Config
from policies.pi05.modeling import Pi05Model
from policies.pi05.processor import NormStats, Pi05Processor, pad_to
from policies.planning import build_planner_context
from policies.types import ActionChunk, Observation, Plan, PlanContext


# ---------------------------------------------------------------------------------------------
# checkpoint files
# ---------------------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, model: Pi05Model, tokenizer, norm_stats: NormStats,
                    extra: dict | None = None) -> Path:
    """Write a checkpoint directory (see policies.checkpoint.save_checkpoint_dir: no half-written files)."""
    return save_checkpoint_dir(path, model, "pi05", {
        "config.json": model.cfg.save,
        "tokenizer.json": lambda p: tokenizer.save(str(p)),
        "norm_stats.json": norm_stats.save,
    }, extra)


def load_checkpoint(path: str | Path) -> tuple[Pi05Model, Pi05Processor]:
    return load_checkpoint_dir(path, Pi05Config, Pi05Model, Pi05Processor)


# ---------------------------------------------------------------------------------------------
# the policy
# ---------------------------------------------------------------------------------------------


class Pi05Policy(LoadedPolicy):
    """A loaded model + processor (on its device, in its dtype: LoadedPolicy) with the LeRobot-style
    inference API."""

    model: Pi05Model
    processor: Pi05Processor
    cfg: Pi05Config

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype: str = "fp32") -> "Pi05Policy":
        model, processor = load_checkpoint(path)
        return cls(model, processor, device=device, dtype=dtype)

    def _tensor(self, ids: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        arr, mask = pad_to(ids, length, self.cfg.pad_id)
        return torch.from_numpy(arr)[None].to(self.device), torch.from_numpy(mask)[None].to(self.device)

    def _base(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(self.processor.prepare_images(obs.images))[None].to(self.device)
        ids, mask = self._tensor(self.processor.prefix_ids(obs.task, obs.state), self.cfg.prefix_text_len)
        return images, ids, mask

    def reset(self) -> None:
        """A new episode: a grounded planner whose read-out carries a belief (`readout_belief`) forgets it;
        everything else is computed from the observation alone."""
        self._belief = None

    _belief = None  # what the read-out read at this episode's last plan (policies.pi05.objects.Belief)

    @property
    def grounded(self) -> bool:
        """A planner that writes what its object read-out sees before it decides (`grounded` preset)."""
        return self.cfg.vision_stem == "objects"

    def _decode(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, ctx_ids: torch.Tensor,
                ctx_mask: torch.Tensor, task: str, plan: bool = True) -> str:
        """Greedy text after [base | context]; a grounded planner's read-out writes the scene line first,
        and a plan (not an answer) is decoded under the plan grammar."""
        with self.autocast():
            if not self.grounded:
                return self.processor.decode(self.model.generate(images, ids, mask, ctx_ids, ctx_mask)[0].tolist())
            return decode_grounded(self.model, self.processor, images, ids, mask, ctx_ids, ctx_mask, [task],
                                   grammar=plan)[0][0]

    @torch.no_grad()
    def generate_plan(self, obs: Observation, context: PlanContext | None = None) -> Plan:
        ctx = build_planner_context(context or PlanContext(task=obs.task))
        ctx_ids, ctx_mask = self._tensor(self.processor.planner_context_ids(ctx), self.cfg.max_context_tokens)
        if self.grounded:  # the facts in force take the read-out's place in the line it writes
            read: dict = {}
            with self.autocast():
                text = decode_grounded(self.model, self.processor, *self._base(obs), ctx_ids, ctx_mask, [obs.task],
                                       facts=[ctx.facts] if ctx.facts else None, belief=self._belief,
                                       read=read)[0][0]
            if self.model.vision.reads_belief:
                self._belief = self.model.vision.belief_after({k: v.float() for k, v in read.items()}, self._belief)
        else:
            text = self._decode(*self._base(obs), ctx_ids, ctx_mask, obs.task)
        thought, subtask = self.processor.parse_plan(text)
        return Plan(thought=thought, subtask=subtask, source="model")

    @torch.no_grad()
    def answer_question(self, obs: Observation, question: str) -> str:
        """A scene question answered from the current frames and state (the question in the task's
        place, no coaching context: as co-trained). Nothing about the plan changes."""
        if not self.cfg.scene_questions:
            raise ValueError("this planner was not co-trained on scene questions, so it cannot answer them "
                             "(train one with `hivla train --preset planner` on planner frames)")
        images = torch.from_numpy(self.processor.prepare_images(obs.images))[None].to(self.device)
        ids, mask = self._tensor(self.processor.prefix_ids(question, obs.state), self.cfg.prefix_text_len)
        no_ctx, no_ctx_mask = self._tensor([], self.cfg.max_context_tokens)
        text = self._decode(images, ids, mask, no_ctx, no_ctx_mask, question, plan=False)
        # a grounded planner answers after its scene line, as it decides: "I see: ... So: <answer>"
        return self.processor.parse_plan(text)[1] if self.grounded else text

    @torch.no_grad()
    def predict_action_chunk(self, obs: Observation, subtask: str) -> ActionChunk:
        """float32 [H, A] in environment units."""
        sub_ids, sub_mask = self._tensor(self.processor.subtask_ids(subtask), self.cfg.max_subtask_tokens)
        with self.autocast():
            actions = self.model.sample_actions(*self._base(obs), sub_ids, sub_mask)
        return self.processor.unnormalize_actions(actions[0].float().cpu().numpy())


def decode_grounded(model: Pi05Model, processor: Pi05Processor, images: torch.Tensor, ids: torch.Tensor,
                    mask: torch.Tensor, ctx_ids: torch.Tensor, ctx_mask: torch.Tensor, tasks: list[str],
                    lines: list[str] | None = None, grammar: bool = True, jump: bool = True,
                    facts: list | None = None, belief: dict | None = None,
                    read: dict | None = None) -> tuple[list[str], list[str]]:
    """A grounded planner's plans for a batch: the read-out's heads write each scene line
    (policies/scene_line.py), which is forced as the first tokens of the text, and the backbone decodes
    on from it ("... So: <subtask>"). `lines`: force these instead (e.g. the true lines, to measure
    deciding apart from reading). Returns (texts, the lines forced).
    `grammar`: decode under the plan grammar (policies/pi05/constrained.py: after its line, only
    "So: <subtask>" naming what the line listed, then <eos>; forced spans appended in one pass). The
    caller knows what it asks: False for scene questions, whose answer is free text after the line.
    `jump=False`: forced spans token by token (the reference the benchmark times jump-forward against).
    `facts`: per row, the facts in force (policies.scene_line.Fact, oldest first), each put in place of
    the line's reading of its object before the line is forced (apply_facts), so the plan is decided
    from the corrected belief; the lines returned are the ones forced.
    `belief`: a read-out with `readout_belief` reads with what it read at the episode's last plan (None:
    nothing yet); `read`, a dict, receives the read-out's heads on these frames (the next plan's belief)."""
    from policies.pi05.constrained import PlanConstraint
    from policies.pi05.objects import read_scenes
    from policies.scene_line import apply_facts, apply_facts_to_line, format_scene

    features = model.vision.features(images, belief)
    heads = model.vision.heads(features) if lines is None or read is not None else {}
    if read is not None:
        read.update(heads)
    if lines is None:
        scenes = read_scenes(heads, tasks)
        if facts is not None:
            scenes = [apply_facts(scene, row, task) for scene, row, task in zip(scenes, facts, tasks)]
        lines = [format_scene(scene) for scene in scenes]
    elif facts is not None:
        lines = [apply_facts_to_line(line, row, task) for line, row, task in zip(lines, facts, tasks)]
    encoded = [processor.encode(line) for line in lines]
    forced = torch.full((len(encoded), max(map(len, encoded))), model.cfg.pad_id, dtype=torch.long)
    for row, line_ids in enumerate(encoded):
        forced[row, : len(line_ids)] = torch.tensor(line_ids)
    constraints = [PlanConstraint.for_line(processor, line) for line in lines] if grammar else None
    out = model.generate(images, ids, mask, ctx_ids, ctx_mask, object_features=features, forced_ids=forced,
                         constraints=constraints, jump=jump)
    return [processor.decode(row) for row in out.tolist()], lines


def load_pi05(path: str | Path, device: str = "cpu", dtype: str = "fp32") -> Pi05Policy:
    return Pi05Policy.from_pretrained(path, device=device, dtype=dtype)


class Pi05HighLevel:
    """HighLevelPolicy backed by the model's own text decoding."""

    def __init__(self, policy: Pi05Policy):
        self.policy = policy

    def reset(self) -> None:
        self.policy.reset()

    def plan(self, obs: Observation, context: PlanContext) -> Plan:
        return self.policy.generate_plan(obs, context)

    def answer(self, obs: Observation, question: str) -> str:
        """SceneQuestionAnswerer: `/ask` in the console."""
        return self.policy.answer_question(obs, question)


class Pi05LowLevel:
    """LowLevelPolicy backed by the action expert."""

    def __init__(self, policy: Pi05Policy):
        if policy.model.cfg.flow_loss_weight == 0:
            raise CheckpointError("this pi05 checkpoint was trained as a planner only (flow_loss_weight 0): its "
                                  "action expert is untrained; use it as --high-level and a vla: or expert low level")
        self.policy = policy

    def reset(self) -> None:
        self.policy.reset()

    def act(self, obs: Observation, subtask: str) -> ActionChunk:
        return self.policy.predict_action_chunk(obs, subtask)
