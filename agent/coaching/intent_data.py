"""Generated training utterances for the intent head: (text, intent) pairs.

Sources, all templates kept as data in prompts/: the scripted coach's grammar (coach.toml, one
section per correction kind), intents.toml (more phrasings, negated rules, questions, pace) and
the planner's scene questions (scene_questions.toml). Each template is rendered with random
objects of the bundled world, and variants add what people add: hedges and politeness before,
"please"/"thanks"/"!" after, a typo in one word, a lower-case or upper-case line.

Never reads benchmarks/data/ (the held-out check set).
"""

from __future__ import annotations

import random
import re
from typing import Iterator

import prompts
from agent.coaching import vocab

SIZES = ("small", "large")
PUSH_SIDES = ("left", "right", "front")
NUDGE_SIDES = ("left", "right", "forward", "back", "up", "down")
BEFORE = ("", "", "", "", "please ", "hey, ", "um, ", "ok, ", "okay ", "robot, ", "hmm, ", "so ", "uh ", "oh, ",
          "right, ", "sorry, ")
HEDGES = ("i think ", "maybe ", "could you ", "can you ", "would you ", "i'd like you to ", "perhaps ", "just ")
AFTER = ("", "", "", "", " please", ", please", ", thanks", "!", " now", " ok?", " pls", "...")
# Hedges read naturally only before a verb phrase; questions and pace requests keep their own shape.
HEDGED = {"override", "negation", "constraint", "nudge"}
# A statement of fact is prefixed by what people say before one ("actually", "look,"), never a hedge
# that turns it into a request ("could you the red block is ...").


def _fills(rng: random.Random) -> dict[str, str]:
    colors = rng.sample(vocab.SCENE_COLORS, 3)
    size = rng.choice(SIZES) if rng.random() < 0.2 else None
    obj = vocab.block_name(colors[0], size)
    if rng.random() < 0.15:
        obj = obj.replace("block", rng.choice(("cube", "one")))
    other = rng.choice([c for c in vocab.SCENE_COLORS if c != colors[2]])
    return {"obj": obj, "color": colors[0], "target": vocab.block_name(colors[1]), "bowl": vocab.bowl_name(colors[2]),
            "side": rng.choice(("left", "middle", "right")), "other": vocab.bowl_name(other), "other_color": other}


def _typo(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(re.sub(r"\W", "", w)) >= 4]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(1, len(w) - 1)
    op = rng.choice(("drop", "swap", "double", "replace"))
    if op == "drop":
        w = w[:j] + w[j + 1:]
    elif op == "swap":
        w = w[:j - 1] + w[j] + w[j - 1] + w[j + 1:]
    elif op == "double":
        w = w[:j] + w[j] + w[j:]
    else:
        w = w[:j] + rng.choice("abcdefghijklmnopqrstuvwxyz") + w[j + 1:]
    words[i] = w
    return " ".join(words)


def _variant(text: str, intent: str, rng: random.Random) -> str:
    if intent in HEDGED and rng.random() < 0.25:
        text = rng.choice(HEDGES) + text
    if intent not in ("question",):
        text = rng.choice(BEFORE) + text
        if not text.endswith(("?", "!")):
            text = text + rng.choice(AFTER)
    if rng.random() < 0.2:
        text = _typo(text, rng)
    roll = rng.random()
    if roll < 0.05:
        text = text.upper()
    elif roll < 0.5:
        text = text.lower()
    if rng.random() < 0.3:
        text = text.rstrip("?!.")
    return text


def templates() -> Iterator[tuple[str, str]]:
    """(intent, template) from every source."""
    for name in ("coach", "intents"):
        for section, groups in prompts.load(name).items():
            if section == "version":
                continue
            for items in groups.values():
                for template in items:
                    yield section, template
    for items in prompts.load("scene_questions")["questions"].values():
        for template in items:
            yield "question", template


FILLER_WORDS = ("hmm", "um", "uh", "er", "so", "well", "the", "a", "and", "then", "robot", "hey", "oh", "ah", "like",
                "okay so", "erm", "huh", "wow", "lol", "test")
OFF_TOPIC = ("banana", "weather", "coffee", "monday", "music", "dinner", "email", "meeting", "football", "window",
             "keyboard", "lunch", "train", "holiday", "password", "phone", "garden", "news", "paper", "sandwich")


def unclear_lines(rng: random.Random, n: int = 400) -> list[str]:
    """Lines that ask for nothing: fillers, keyboard mash, digits, off-topic words."""
    out = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.3:
            out.append(" ".join(rng.choice(FILLER_WORDS) for _ in range(rng.randint(1, 3))))
        elif roll < 0.45:
            out.append(" ".join("".join(rng.choice("asdfghjklqwertyuiopzxcvbnm") for _ in range(rng.randint(1, 6)))
                                for _ in range(rng.randint(1, 3))))
        elif roll < 0.55:
            out.append(str(rng.randint(0, 99999)) + rng.choice(("", "?", "!", " ok")))
        else:
            out.append(" ".join(rng.choice(OFF_TOPIC + FILLER_WORDS) for _ in range(rng.randint(1, 4))))
    return out


def generate(seed: int = 0, renders_per_template: int = 12) -> list[tuple[str, str]]:
    """(text, intent) pairs, deduplicated, in a seeded order."""
    rng = random.Random(seed)
    seen: dict[str, str] = {}
    for text in unclear_lines(rng):
        seen.setdefault(text, "unclear")
    for intent, template in templates():
        for _ in range(renders_per_template):
            fills = _fills(rng)
            fills["dir"] = rng.choice(NUDGE_SIDES if intent == "nudge" else PUSH_SIDES)
            try:
                text = template.format(**fills)
            except (KeyError, IndexError):
                raise ValueError(f"{intent}: template {template!r} uses a slot the generator does not fill")
            text = _variant(text, intent, rng)
            seen.setdefault(text, intent)
    pairs = list(seen.items())
    rng.shuffle(pairs)
    return pairs
