"""Configuration of the π0.5-style model: one dataclass, four presets.

- `tiny`: for tests (seconds on a CPU).
- `small`: the shipped default, sized to train in about an hour on 2 CPU cores.
- `small_conv`: an experiment (a conv stem, the planner only); measured below `small`, not shipped.
- `pi05`: the published dims (PaliGemma 2B backbone + 300M action expert + So400m vision tower),
  built on the meta device so a later step can load published weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.checkpoint import ConfigFile, preset_config

CAMERAS = ("front", "wrist")
CONTEXT_LAST = ("in_force", "done", "history")
VISION_STEMS = ("patch", "conv", "resampler", "objects")
OBJECT_TOKENS = 19  # "objects" stem: one token per block name and the drawer (policies.pi05.objects.object_names)
BOWL_TOKENS = 6  # and, with `scene_bowls`, one per bowl colour (policies.pi05.objects.BOWL_NAMES)


@dataclass
class Pi05Config(ConfigFile):
    """The model's dims and switches; as config.json through ConfigFile (policies/checkpoint.py)."""

    # vocabulary (set from the tokenizer when one is trained; includes the 256 state-bin tokens)
    vocab_size: int = 1024
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    # vision tower (SigLIP-style ViT), shared by both cameras
    cameras: tuple[str, ...] = CAMERAS
    image_size: int = 64
    patch_size: int = 16
    # "patch": a linear patch embedding (SigLIP, the published π0.5); "conv": a GroupNorm conv stem
    # downsampling by patch_size, so small objects keep their colour (see modeling.ConvStem)
    # "resampler": a conv trunk keeping a 16x16 map, read by `vision_queries` learned queries that
    # cross-attend to it (policies/pi05/vision.py); vision_depth counts its cross-attention blocks
    # "objects": the same kind of map read by one query per object name, each supervised with the
    # object's place by the simulator (policies/pi05/objects.py); its reading writes the scene line
    vision_stem: str = "patch"
    vision_queries: int = 8
    random_shift_pad: int = 0  # training-time random shift of the images (pixels; DrQ), 0: none
    vision_width: int = 128
    vision_depth: int = 2
    vision_heads: int = 4
    vision_mlp_dim: int = 512

    # backbone (Gemma-style)
    width: int = 256
    depth: int = 4
    num_heads: int = 4
    num_kv_heads: int = 1
    head_dim: int = 64
    mlp_dim: int = 1024
    rope_theta: float = 10_000.0

    # action expert (Gemma-style, same depth and attention geometry as the backbone, smaller width)
    expert_width: int = 128
    expert_mlp_dim: int = 512

    # robot interface
    state_dim: int = 8
    action_dim: int = 5
    action_horizon: int = 10
    state_bins: int = 256

    # What the coaching context names besides the corrections. "in_force": the subtask being executed
    # ("last: ..."); "done": the subtask completed most recently ("done: ..."). With "in_force" nearly
    # every training sample answers "the same as last" (plans are re-asked on a timer), so a model learns
    # to copy it and repeats finished subtasks in closed loop; "done" leaves the choice to the images.
    # "history": the last few completed subtasks and, mid-subtask, the one in force, each labelled
    # (policies.planning.PlannerContext.last), so a timer re-plan can keep it and a swap knows its phase.
    context_last: str = "in_force"

    # token budgets (base prefix text = task + state tokens; the coaching context is its own segment)
    max_task_tokens: int = 24
    max_context_tokens: int = 24
    max_subtask_tokens: int = 10
    max_target_tokens: int = 40

    # flow matching
    flow_steps: int = 10
    time_beta_alpha: float = 1.5
    time_beta_beta: float = 1.0

    # loss weights
    text_loss_weight: float = 1.0
    flow_loss_weight: float = 1.0
    action_token_loss_weight: float = 1.0

    # discrete action tokens for the backbone (π0.5 knowledge insulation: the backbone learns actions as
    # tokens, the expert as a flow). Every `action_token_stride`-th chunk step, binned; 0 turns it off.
    action_token_stride: int = 2
    # π0.5 detaches the backbone's keys/values from the flow loss; False lets the flow loss train the
    # backbone and vision tower too (π0's recipe), kept as an ablation switch.
    knowledge_insulation: bool = True
    bin_token_offset: int = 6  # id of the first state-bin token <s0> (see processor.special_tokens)

    # co-trained on scene questions (the question in the task's place, the answer as the target), so
    # the high level can answer `/ask`; a checkpoint trained without them refuses to answer
    scene_questions: bool = False

    # A baseline that never sees the images (their tokens are zeros) and writes no thought: what the
    # task, the state and the coaching context alone decide. A grounded planner must beat it widely.
    blind: bool = False

    # "objects" stem: the read-out also has a query per bowl colour and the scene line lists the bowls
    # present ("; bowls: red, blue"), so a bowl no block sits in (swap_bowls' spare) is in what the
    # planner reads. False: a checkpoint from before bowls were read (its layout and lines unchanged).
    scene_bowls: bool = False

    # "objects" stem: each block's query also reads what the read-out believed of it at the episode's
    # previous plan (place, where, side, x; the drawer's state), so a block the arm hides now, or one
    # shut in the drawer, is still read where it was (object permanence). Zero-initialised: a read-out
    # warm-started from one without it reads exactly as that one did until it is trained.
    readout_belief: bool = False
    # with `readout_belief`: a block read at an earlier plan and not at the previous one stays in the belief,
    # marked carried (`stale`), so a block hidden for several plans in a row is still believed where it was
    # last read. The read-out learns when to trust a carried sighting (a block behind the arm) and when to
    # drop it (a phantom read once); the carried mark's embedding starts at zero.
    readout_memory: bool = False

    preset: str = "custom"

    @property
    def image_tokens_per_camera(self) -> int:
        if self.vision_stem == "resampler":
            return self.vision_queries
        return (self.image_size // self.patch_size) ** 2

    @property
    def prefix_text_len(self) -> int:
        return self.max_task_tokens + self.state_dim

    @property
    def image_tokens(self) -> int:
        """Image tokens of all cameras together (the object read-out reads both cameras into one set)."""
        if self.vision_stem == "objects":
            return OBJECT_TOKENS + (BOWL_TOKENS if self.scene_bowls else 0)
        return len(self.cameras) * self.image_tokens_per_camera

    @property
    def prefix_len(self) -> int:
        return self.image_tokens + self.prefix_text_len

    def validate(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}")
        if self.vision_stem not in VISION_STEMS:
            raise ValueError(f"vision_stem must be one of {VISION_STEMS}, got {self.vision_stem!r}")
        if self.vision_stem == "conv" and (self.patch_size & (self.patch_size - 1) or self.vision_width % 8):
            raise ValueError("a conv stem needs a power-of-two patch_size and a vision_width divisible by 8")
        if self.context_last not in CONTEXT_LAST:
            raise ValueError(f"context_last must be one of {CONTEXT_LAST}, got {self.context_last!r}")
        if self.vision_width % self.vision_heads:
            raise ValueError("vision_width must be a multiple of vision_heads")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even (RoPE)")
        if self.readout_memory and not self.readout_belief:
            raise ValueError("readout_memory carries what a belief held: set readout_belief=true too")

    @classmethod
    def check_fields(cls, data: dict) -> None:
        _check_types(data)


def _check_types(data: dict) -> None:
    """Each field has the type of its default (an int where an int belongs, ...), so a hand-edited
    config.json fails here, naming the field, instead of deep inside the model's constructor."""
    defaults = Pi05Config()
    for name, value in data.items():
        default = getattr(defaults, name)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
            want = "true or false"
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
            want = "an integer"
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            want = "a number"
        elif isinstance(default, str):
            ok = isinstance(value, str)
            want = "a string"
        else:  # cameras: a list of names
            ok = isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) for v in value)
            want = "a non-empty list of strings"
        if not ok:
            raise ValueError(f"config field {name!r} must be {want}, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"config field {name!r} must not be negative, got {value!r}")
    for name in ("image_size", "patch_size", "vision_width", "vision_queries", "vision_depth", "vision_heads", "width", "depth",
                 "num_heads", "num_kv_heads", "head_dim", "mlp_dim", "expert_width", "state_dim", "action_dim",
                 "action_horizon", "vocab_size"):
        if name in data and data[name] < 1:
            raise ValueError(f"config field {name!r} must be at least 1, got {data[name]!r}")


def tiny() -> Pi05Config:
    return Pi05Config(
        vocab_size=512, image_size=32, patch_size=16, vision_width=32, vision_depth=1, vision_heads=2,
        vision_mlp_dim=64, width=48, depth=2, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=96,
        expert_width=32, expert_mlp_dim=64, action_horizon=4, max_task_tokens=12, max_context_tokens=8,
        max_subtask_tokens=8, max_target_tokens=24, flow_steps=4, preset="tiny",
    )


def small() -> Pi05Config:
    # 32 image tokens + 32 task/state + 24 context + 10 subtask + 40 target + 10 actions ≈ 150 tokens a
    # sample. Width 256 as DESIGN.md's budget, but 4 layers (not 6): the 2 cores are shared with other
    # jobs, and at 6 layers an hour bought too few optimizer steps (measured ~0.15 steps/s under load).
    return Pi05Config(preset="small")


def small_conv() -> Pi05Config:
    # A measured experiment, not the shipped planner: a conv stem giving 8x8 tokens a camera (128 image
    # tokens), random shift, trained as the planner only (no action expert or action tokens, a third of
    # the step time). Warm-started from the shipped checkpoint and trained 73 minutes on 600 episodes
    # it decided 61% of held-out frames (the shipped model 78%) and overfit after ~2000 steps; see
    # policies/checkpoints/small/MODEL_CARD.md, "Tried: a conv stem".
    return Pi05Config(vision_stem="conv", patch_size=8, random_shift_pad=4, context_last="done",
                      action_token_stride=0, flow_loss_weight=0.0, preset="small_conv")


def planner() -> Pi05Config:
    # The planner that reads the scene (issue #21): 8 query tokens a camera read from a 16x16 conv map
    # (policies/pi05/vision.py), random shift, trained as the planner only (thought + subtask, and the
    # scene questions co-trained as text), so no action expert runs and the subtask segment is a single
    # token. The backbone keeps `small`'s dims so it starts from the shipped checkpoint's language
    # (`hivla train --init-from policies/checkpoints/small`): measured, a 192-wide backbone trained from
    # scratch on planner frames had not learned to copy the bowl's colour from the task after 57k
    # samples, while the shipped one does. The read-out's keys are 64 wide: 256 keys a camera make
    # their projection the read-out's main cost after the convs (0.37 s vs 0.46 s per 64 images).
    return Pi05Config(vision_stem="resampler", vision_queries=8, vision_width=64, vision_depth=2,
                      vision_heads=4, vision_mlp_dim=256, random_shift_pad=4, context_last="done",
                      action_token_stride=0, flow_loss_weight=0.0, max_subtask_tokens=1, expert_width=32,
                      expert_mlp_dim=64, scene_questions=True, preset="planner")


def grounded() -> Pi05Config:
    # The planner that says what it sees before it decides (issue #28): the object read-out
    # (policies/pi05/objects.py), trained first on its own with a loss per object, then frozen while
    # the backbone learns the grounded thought ("I see: ... So: subtask"). `small`'s backbone dims, so
    # it starts from the shipped checkpoint's language. A scene line and a subtask fit in 64 tokens.
    # The context is the episode's history (the subtasks done, the one under way: a swap's phase and a
    # timer re-plan are unreadable from the last subtask done alone), 64 tokens with what was said.
    return Pi05Config(vision_stem="objects", vision_width=96, vision_depth=3, vision_heads=4,
                      vision_mlp_dim=384, context_last="history", max_context_tokens=64, action_token_stride=0,
                      flow_loss_weight=0.0, max_subtask_tokens=1, max_target_tokens=80, expert_width=32,
                      expert_mlp_dim=64, scene_questions=True, scene_bowls=True, preset="grounded")


def pi05() -> Pi05Config:
    # Published π0.5: PaliGemma (Gemma 2B) backbone, Gemma-300M action expert, SigLIP So400m/14 at 224 px.
    return Pi05Config(
        vocab_size=257_152, image_size=224, patch_size=14, vision_width=1152, vision_depth=27,
        vision_heads=16, vision_mlp_dim=4304, width=2048, depth=18, num_heads=8, num_kv_heads=1,
        head_dim=256, mlp_dim=16_384, expert_width=1024, expert_mlp_dim=4096, action_dim=32,
        action_horizon=50, state_dim=32, max_task_tokens=48, max_context_tokens=64, max_subtask_tokens=16,
        max_target_tokens=64, preset="pi05",
    )


PRESETS = {"tiny": tiny, "small": small, "small_conv": small_conv, "planner": planner, "grounded": grounded,
           "pi05": pi05}


def make_config(preset: str, **overrides) -> Pi05Config:
    return preset_config(PRESETS, preset, overrides)
