"""Everything between the world and the model's tensors: tokenizer, text layouts, state bins,
quantile normalisation, image resizing, and parsing decoded text back into a plan.

Text layouts (token budgets come from Pi05Config):
  base prefix   "<task> {task}" + one state-bin token per state dimension
  context       "<coach> last: {subtask in force} | {recent corrections}" (high level only), or
                "<coach> done: {subtask completed last} | ..." with the config's context_last="done", or
                "<coach> done: {a}; {b} | doing: {subtask in force} | ..." with "history"
  subtask       "{subtask}"                       (the low level's instruction)
  target        "<bos>{thought} So: {subtask}<eos>" (what the high level decodes)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policies.pi05.configuration import Pi05Config
from policies.planning import PLAN_SEPARATOR, PlannerContext, PlanParseError, parse_plan

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
TASK_MARK, COACH_MARK = "<task>", "<coach>"
STATE_BINS = 256


def state_token(i: int) -> str:
    return f"<s{i}>"


def special_tokens() -> list[str]:
    # order fixes the ids: pad=0, bos=1, eos=2 (Pi05Config defaults)
    return [PAD, BOS, EOS, UNK, TASK_MARK, COACH_MARK] + [state_token(i) for i in range(STATE_BINS)]


# ---------------------------------------------------------------------------------------------
# tokenizer (trained offline with the `tokenizers` library; nothing comes from a hub)
# ---------------------------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """Byte-level BPE over the project's own text (prompts + data). Byte-level means any text a
    person types can be encoded (no unknown characters) and decoding gives the text back exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens(), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    check_tokenizer(tok)
    return tok


def check_tokenizer(tok) -> None:
    for i, name in enumerate(special_tokens()[:3]):
        if tok.token_to_id(name) != i:
            raise ValueError(f"tokenizer: {name} must have id {i}, has {tok.token_to_id(name)}")
    first = tok.token_to_id(state_token(0))
    for i in range(STATE_BINS):
        if tok.token_to_id(state_token(i)) != first + i:
            raise ValueError(f"tokenizer: state-bin tokens must have consecutive ids ({state_token(i)})")


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on bad JSON
        raise ValueError(f"{path}: not a readable tokenizer.json ({err})") from err
    check_tokenizer(tok)
    return tok


def prompt_corpus() -> list[str]:
    """All string values in prompts/*.toml: the language the project speaks."""
    import tomllib
    from importlib import resources

    out: list[str] = []

    def walk(value) -> None:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for entry in resources.files("prompts").iterdir():
        if entry.name.endswith(".toml"):
            walk(tomllib.loads(entry.read_text(encoding="utf-8")))
    return out


# ---------------------------------------------------------------------------------------------
# normalisation statistics
# ---------------------------------------------------------------------------------------------


@dataclass
class NormStats:
    """Per-dimension quantiles (q01, q99) of state and actions; both map to [-1, 1] with them."""

    state_q01: np.ndarray
    state_q99: np.ndarray
    action_q01: np.ndarray
    action_q99: np.ndarray

    @classmethod
    def from_data(cls, states: np.ndarray, actions: np.ndarray) -> "NormStats":
        states = np.asarray(states, np.float64).reshape(-1, states.shape[-1])
        actions = np.asarray(actions, np.float64).reshape(-1, actions.shape[-1])
        if len(states) == 0 or len(actions) == 0:
            raise ValueError("cannot compute normalisation statistics from no data")
        return cls(
            state_q01=np.quantile(states, 0.01, axis=0).astype(np.float32),
            state_q99=np.quantile(states, 0.99, axis=0).astype(np.float32),
            action_q01=np.quantile(actions, 0.01, axis=0).astype(np.float32),
            action_q99=np.quantile(actions, 0.99, axis=0).astype(np.float32),
        )

    def to_dict(self) -> dict:
        return {"state": {"q01": self.state_q01.tolist(), "q99": self.state_q99.tolist()},
                "action": {"q01": self.action_q01.tolist(), "q99": self.action_q99.tolist()}}

    @classmethod
    def from_dict(cls, d: dict) -> "NormStats":
        try:
            return cls(*(np.asarray(d[k][q], np.float32) for k in ("state", "action") for q in ("q01", "q99")))
        except (KeyError, TypeError) as err:
            raise ValueError(f"norm_stats.json needs state/action q01/q99 lists ({err})") from err

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "NormStats":
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err


def to_unit(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    span = np.maximum(hi - lo, 1e-6)  # a constant dimension maps to -1 instead of dividing by zero
    return np.clip(2.0 * (x - lo) / span - 1.0, -1.0, 1.0).astype(np.float32)


def from_unit(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return ((np.asarray(y, np.float32) + 1.0) / 2.0 * np.maximum(hi - lo, 1e-6) + lo).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the processor
# ---------------------------------------------------------------------------------------------


class BaseProcessor:
    """What every model's processor shares (this one and policies.vla's): its config, tokenizer and
    norm stats, checked to fit each other, and the actions' quantile normalisation."""

    def __init__(self, cfg, tokenizer, norm_stats: NormStats):
        self.cfg = cfg
        self.tok = tokenizer
        self.stats = norm_stats
        check_stats_dims(norm_stats, cfg.state_dim, cfg.action_dim)
        if tokenizer.get_vocab_size() > cfg.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} tokens, the model only {cfg.vocab_size}")

    @classmethod
    def from_dir(cls, path: str | Path, cfg):
        """The processor of `cfg` with the tokenizer.json and norm_stats.json in checkpoint directory `path`."""
        return cls(cfg, load_tokenizer(Path(path) / "tokenizer.json"), NormStats.load(Path(path) / "norm_stats.json"))

    def normalize_actions(self, actions: np.ndarray) -> np.ndarray:
        return to_unit(np.asarray(actions, np.float32), self.stats.action_q01, self.stats.action_q99)

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        return from_unit(actions, self.stats.action_q01, self.stats.action_q99)


class Pi05Processor(BaseProcessor):
    cfg: Pi05Config

    def __init__(self, cfg: Pi05Config, tokenizer, norm_stats: NormStats):
        super().__init__(cfg, tokenizer, norm_stats)
        if tokenizer.token_to_id(state_token(0)) != cfg.bin_token_offset:
            raise ValueError(f"tokenizer puts <s0> at id {tokenizer.token_to_id(state_token(0))}, "
                             f"config.bin_token_offset is {cfg.bin_token_offset}")
        self._state_ids = np.array([tokenizer.token_to_id(state_token(i)) for i in range(STATE_BINS)])

    # -- numbers ---------------------------------------------------------------------------------

    def normalize_state(self, state: np.ndarray) -> np.ndarray:
        return to_unit(np.asarray(state, np.float32), self.stats.state_q01, self.stats.state_q99)

    def state_bins(self, state: np.ndarray) -> np.ndarray:
        """Normalised state in [-1, 1] -> bin index in [0, 255] per dimension."""
        unit = self.normalize_state(state)
        return np.clip(((unit + 1.0) / 2.0 * STATE_BINS).astype(np.int64), 0, STATE_BINS - 1)

    # -- text ------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids if text else []

    def context_ids(self, last_subtask: str | None = None, corrections: Sequence[str] = ()) -> list[int]:
        """"<coach> last: {subtask in force} | correction | correction" (or "done: {subtask completed
        last}", see Pi05Config.context_last) and what the coach said. Too long -> the oldest part is cut,
        the newest corrections survive. Empty when there is nothing (the first plan of an episode)."""
        label = {"in_force": "last", "done": "done"}.get(self.cfg.context_last)  # "history" writes its own labels
        parts = [f"{label}: {last_subtask}" if label else last_subtask] if last_subtask else []
        parts.extend(c for c in corrections if c)
        if not parts:
            return []
        room = self.cfg.max_context_tokens - 1
        return [self.tok.token_to_id(COACH_MARK)] + self.encode(" " + " | ".join(parts))[-room:]

    def planner_context_ids(self, ctx: PlannerContext) -> list[int]:
        """The coaching context of policies.planning's PlannerContext, in the config's compact layout."""
        # the session's remembered rules come first: the oldest part, cut first when too long
        return self.context_ids(ctx.last(self.cfg.context_last), ctx.read_texts)

    def prefix_ids(self, task: str, state: np.ndarray) -> list[int]:
        """The base prefix text: task, then one bin token per state dimension."""
        cfg = self.cfg
        state = np.asarray(state, np.float32).reshape(-1)
        if state.shape[0] != cfg.state_dim:
            raise ValueError(f"state has {state.shape[0]} dims, the model expects {cfg.state_dim}")
        task_ids = self.encode(f"{TASK_MARK} {task}")[: cfg.max_task_tokens]
        return task_ids + self._state_ids[self.state_bins(state)].tolist()

    def subtask_ids(self, subtask: str) -> list[int]:
        return self.encode(subtask)[: self.cfg.max_subtask_tokens]

    def target_ids(self, thought: str, subtask: str) -> list[int]:
        """<bos> thought So: subtask <eos>; an over-long thought is shortened so the subtask survives."""
        cfg = self.cfg
        sub = self.encode(f"{PLAN_SEPARATOR.strip()} {subtask}")
        thought_ids = self.encode(thought) if thought else []
        room = cfg.max_target_tokens - 2 - len(sub)
        thought_ids = thought_ids[: max(room, 0)]
        return ([cfg.bos_id] + thought_ids + sub)[: cfg.max_target_tokens - 1] + [cfg.eos_id]

    def answer_ids(self, answer: str) -> list[int]:
        """<bos> answer <eos>: the target of a scene question (no "So:", it names no subtask)."""
        cfg = self.cfg
        return ([cfg.bos_id] + self.encode(answer))[: cfg.max_target_tokens - 1] + [cfg.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        clean = []
        for i in ids:
            i = int(i)
            if i == self.cfg.eos_id:
                break
            if i in (self.cfg.pad_id, self.cfg.bos_id):
                continue
            clean.append(i)
        return self.tok.decode(clean, skip_special_tokens=True).strip()

    @staticmethod
    def parse_plan(text: str) -> tuple[str, str]:
        """Decoded "thought So: subtask" -> (thought, subtask), read by policies.planning.parse_plan. The
        model's targets always hold "So:"; a decode without it is shown whole as the subtask, so a broken
        model's text stays visible in the plan instead of being dropped."""
        try:
            plan = parse_plan(text)
        except PlanParseError:
            return "", text.strip()
        return plan.thought, plan.subtask

    # -- images ----------------------------------------------------------------------------------

    def prepare_images(self, images: dict[str, np.ndarray]) -> np.ndarray:
        return stack_cameras(images, self.cfg.cameras, self.cfg.image_size)


def stack_cameras(images: dict[str, np.ndarray], cameras, size: int) -> np.ndarray:
    """camera -> uint8 [H, W, 3]  =>  uint8 [n_cam, size, size, 3] in `cameras` order."""
    out = []
    for cam in cameras:
        if cam not in images:
            raise ValueError(f"the model needs a {cam!r} camera image, got {sorted(images)}")
        out.append(resize_image(images[cam], size))
    return np.stack(out)


def check_stats_dims(stats: NormStats, state_dim: int, action_dim: int) -> None:
    for name, arr, dim in (("state", stats.state_q01, state_dim), ("action", stats.action_q01, action_dim)):
        if arr.shape != (dim,):
            raise ValueError(f"norm stats: {name} has {arr.shape[0]} dims, the model expects {dim}")


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 [H, W, 3] to [size, size, 3] (no torchvision here)."""
    return resize_images(np.asarray(img)[None], size)[0]


def resize_images(imgs: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 [N, H, W, 3] to [N, size, size, 3]: an exact area average when the size divides
    (128 -> 64), antialiased bilinear otherwise."""
    imgs = np.asarray(imgs)
    if imgs.shape[1] == size and imgs.shape[2] == size:
        return imgs.astype(np.uint8, copy=False)
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).float()
    if imgs.shape[1] % size == 0 and imgs.shape[2] % size == 0:
        y = F.adaptive_avg_pool2d(x, size)
    else:
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    # C order: a permuted view would reach writers that dump the raw buffer (safetensors) scrambled
    return y.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).contiguous().numpy()


def pad_to(ids: list[int], length: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    ids = list(ids)[:length]
    arr = np.full(length, pad_id, np.int64)
    arr[: len(ids)] = ids
    mask = np.zeros(length, bool)
    mask[: len(ids)] = True
    return arr, mask
