"""Scene questions and their answers, written from the simulator's facts (agent.envs.scene_facts).

The planner's backbone is co-trained on them beside its plans (π0.5 co-trains on captions, VQA and
localisation): a question about every kind of fact the plan depends on, so the image read-out learns
where each block is, not only the few colour words a plan names.

    qa = sample_questions(facts, rng, n=2)   # [(type, question, answer), ...]

Answers are short and canonical ("the red block is in the blue bowl", "the red block and the green block", "nothing",
"yes, it is open", "two"), so held-out accuracy is an exact match.
"""

from __future__ import annotations

import numpy as np

import prompts
from policies.scene_line import line_order

QUESTION_TYPES = ("where", "bowl", "drawer", "held", "drawer_state", "table", "leftmost", "count", "stacked")
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")


def _listing(names: list[str]) -> str:
    if not names:
        return "nothing"
    names = [f"the {n}" for n in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def where_phrase(fact: dict) -> str:
    place, where = fact["place"], fact["where"]
    return {"table": "on the table", "held": "in the gripper", "drawer": "in the drawer",
            "bowl": f"in the {where}", "block": f"on the {where}", "moving": "moving"}[place]


def answer(kind: str, facts: dict, obj: str | None = None) -> str:
    """The canonical answer to a question of `kind` (about `obj`: a block or bowl name, if it needs one)."""
    # in the scene line's order (a listing or "the leftmost" is copied from the line the planner wrote)
    blocks: dict = {n: facts["blocks"][n] for n in line_order({n: (f["x"], f["place"], f.get("where"))
                                                               for n, f in facts["blocks"].items()})}
    if kind == "where":
        # the block named first: a planner that has just written "the red block" copies what follows
        # "red block" in its own scene line, a lookup a small model learns where a bare place is not
        # (measured: 62.5% of "where" questions with bare places, the line right in most misses)
        return f"the {obj} is {where_phrase(blocks[obj]) if obj in blocks else 'not in the scene'}"
    if kind == "bowl":
        return _listing([n for n, f in blocks.items() if f["place"] == "bowl" and f["where"] == obj])
    if kind == "drawer":
        return _listing([n for n, f in blocks.items() if f["place"] == "drawer"])
    if kind == "held":
        return f"the {facts['held']}" if facts["held"] else "nothing"
    if kind == "drawer_state":
        return "yes, it is open" if facts["drawer_open"] else "no, it is shut"
    if kind == "table":
        return _listing([n for n, f in blocks.items() if f["place"] == "table"])
    if kind == "leftmost":
        return f"the {next(iter(blocks))}" if blocks else "there are no blocks"
    if kind == "count":
        return NUMBERS[min(sum(f["place"] == "table" for f in blocks.values()), len(NUMBERS) - 1)]
    if kind == "stacked":
        return _listing([n for n, f in blocks.items() if f["place"] == "block" and f["where"] == obj])
    raise ValueError(f"unknown question type {kind!r}; one of {QUESTION_TYPES}")


def type_probabilities(weights: dict[str, float] | None) -> np.ndarray | None:
    """How often each of QUESTION_TYPES is asked: `weights` (type -> relative weight, 1 for a type not
    named) normalised; None (every type alike) when no weights are given. A bad type or weight is a
    ValueError that names the fix."""
    if not weights:
        return None
    unknown = sorted(set(weights) - set(QUESTION_TYPES))
    if unknown:
        raise ValueError(f"unknown question type {', '.join(unknown)}; one of {', '.join(QUESTION_TYPES)}")
    if any(w < 0 for w in weights.values()) or not any(weights.get(k, 1.0) > 0 for k in QUESTION_TYPES):
        raise ValueError("question weights must be >= 0 and not all 0")
    w = np.array([weights.get(k, 1.0) for k in QUESTION_TYPES], dtype=np.float64)
    return w / w.sum()


def sample_questions(facts: dict, rng: np.random.Generator, n: int = 2,
                     probabilities: np.ndarray | None = None) -> list[tuple[str, str, str]]:
    """n distinct (type, question, answer) triples about this scene, phrasings drawn at random.
    "where" questions sometimes name a block the scene does not hold (answer: "the ... is not in the scene").
    `probabilities`: how often each type is drawn (type_probabilities); None, uniformly (the draws the
    held-out questions of every recorded evaluation were made with)."""
    phrasings = prompts.load("scene_questions")["questions"]
    blocks = list(facts["blocks"])
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for _ in range(8 * n):
        if len(out) >= n:
            break
        kind = QUESTION_TYPES[rng.integers(len(QUESTION_TYPES)) if probabilities is None
                              else rng.choice(len(QUESTION_TYPES), p=probabilities)]
        obj = None
        if kind in ("where", "stacked"):
            if not blocks:
                continue
            obj = blocks[rng.integers(len(blocks))]
            if kind == "where" and rng.random() < 0.15:
                absent = [f"{c} block" for c in COLOURS if not any(c in b for b in blocks)]
                if absent:
                    obj = absent[rng.integers(len(absent))]
        elif kind == "bowl":
            if not facts["bowls"]:
                continue
            obj = facts["bowls"][rng.integers(len(facts["bowls"]))]
        templates = phrasings[kind]
        question = templates[rng.integers(len(templates))].format(obj=obj, bowl=obj)
        if question in seen:
            continue
        seen.add(question)
        out.append((kind, question, answer(kind, facts, obj)))
    return out
