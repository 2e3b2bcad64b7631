"""An untrained tiny VLA checkpoint for tests about plumbing, not about what a policy learned."""

from __future__ import annotations

import numpy as np


def make_random_vla(out, subtasks: list[str], **config):
    """Save an untrained tiny VLA checkpoint (random weights, seed 0; a tokenizer over `subtasks`,
    `config` overriding the tiny preset) to `out` and return it: made in well under a second."""
    import torch

    from policies.pi05.processor import NormStats
    from policies.vla.configuration import make_config
    from policies.vla.modeling import VlaModel
    from policies.vla.policy import save_checkpoint
    from policies.vla.processor import VlaProcessor, train_subtask_tokenizer

    tok = train_subtask_tokenizer(subtasks, vocab_size=600)
    cfg = make_config("tiny", vocab_size=tok.get_vocab_size(), **config)
    rng = np.random.default_rng(0)
    stats = NormStats.from_data(rng.normal(size=(64, cfg.state_dim)).astype(np.float32),
                                rng.normal(scale=0.01, size=(64, cfg.action_dim)).astype(np.float32))
    torch.manual_seed(0)
    save_checkpoint(out, VlaModel(cfg).eval(), VlaProcessor(cfg, tok, stats))
    return out
