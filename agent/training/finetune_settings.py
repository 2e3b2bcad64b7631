"""The settings of `hivla finetune` (pi05), read by the fine-tune (finetune.py) and by its data
(finetune_data.py): they live here so that both depend on them and neither on the other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.training.loop import RecipeSettings
from policies.pi05.policy import CheckpointError


@dataclass(kw_only=True)
class FinetuneSettings(RecipeSettings):
    """The fields every run has (data, out, device, dtype, resume, seed, ...) are RecipeSettings'
    (agent/training/loop.py); the schedule's defaults are this recipe's."""

    base: str  # base checkpoint directory
    data: list[str]  # exports (sft/pairs/lerobot: their coaching table, nothing else) or coached session directories
    base_data: list[str] | None = None  # datagen sessions or a directory with a cached tensor dataset
    correction_share: float = 0.1
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    anchor_weight: float = 1.0
    lora: bool = False
    lora_rank: int = 16
    held_out_fraction: float = 0.2
    approved_plans: bool = True  # also train on the model's plans the coach let stand (see corrections.py)
    with_corrections: float = 0.5  # share of coaching samples whose context holds the corrections said so far
    window_before: int = 10
    window_after: int = 30
    max_base_samples: int = 20_000  # base samples kept in memory (planner frames: each directory its share)
    base_stride: int = 5  # keep every Nth step of base sessions (planner frames are decisions already: all read)
    # planner-frame base data: scene questions a frame, on average (None: hivla train's default for a model
    # co-trained on them, none for one that is not)
    base_scene_questions: float | None = None
    eval_base_samples: int = 64
    progress: bool = True
    extra: dict = field(default_factory=dict)  # recorded in checkpoint_info.json

    def validate(self) -> None:
        if not 0.0 < self.correction_share <= 1.0:
            raise ValueError(f"--correction-share must be in (0, 1], got {self.correction_share}")
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError("--steps must be >= 0 and --batch-size >= 1")
        if not 0.0 <= self.with_corrections <= 1.0:
            raise ValueError(f"--with-corrections must be in [0, 1], got {self.with_corrections}")
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ValueError(f"held_out_fraction must be in [0, 1), got {self.held_out_fraction}")
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"--dtype must be fp32 or bf16, got {self.dtype!r}")
        if self.base_scene_questions is not None and self.base_scene_questions < 0:
            raise ValueError(f"base_scene_questions must be >= 0, got {self.base_scene_questions}")
        if self.max_base_samples < 1:
            raise ValueError(f"--max-base-samples must be at least 1, got {self.max_base_samples}")
        if self.anchor_weight < 0:
            raise ValueError("anchor_weight must be >= 0")
        if not Path(self.base).is_dir():
            raise CheckpointError(f"--base {self.base}: not a checkpoint directory")
