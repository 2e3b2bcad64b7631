"""Everything between the world and the VLA's tensors: the subtask tokenizer, quantile normalisation
of state and actions, and image resizing (shared with the pi05 processor, which owns those helpers)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from policies.pi05.processor import BaseProcessor, pad_to, stack_cameras, to_unit, train_tokenizer
from policies.vla.configuration import VlaConfig


def train_subtask_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """Byte-level BPE over the subtask texts (and the project's prompts): any text a person or a
    planner writes encodes, words the data has seen become whole tokens."""
    from policies.pi05.processor import prompt_corpus

    return train_tokenizer(prompt_corpus() + list(texts) * 4, vocab_size=vocab_size)


class VlaProcessor(BaseProcessor):
    cfg: VlaConfig

    def normalize_state(self, state: np.ndarray) -> np.ndarray:
        state = np.asarray(state, np.float32).reshape(-1)
        if state.shape[0] != self.cfg.state_dim:
            raise ValueError(f"state has {state.shape[0]} dims, the model expects {self.cfg.state_dim}")
        return to_unit(state, self.stats.state_q01, self.stats.state_q99)

    def subtask_ids(self, subtask: str) -> tuple[np.ndarray, np.ndarray]:
        """Lower-cased, whitespace-normalised text -> (ids, mask), each [max_subtask_tokens]."""
        text = " ".join(str(subtask).lower().split())
        ids = self.tok.encode(text).ids if text else []
        return pad_to(ids, self.cfg.max_subtask_tokens, self.cfg.pad_id)

    def prepare_images(self, images: dict[str, np.ndarray]) -> np.ndarray:
        return stack_cameras(images, self.cfg.cameras, self.cfg.image_size)
