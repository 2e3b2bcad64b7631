"""A grounded plan as a token automaton: what the decoder may write after <bos>, row by row.

    constraint = PlanConstraint.for_line(processor, "I see: red block on the table at the left.")
    node = constraint.root
    span, node = constraint.forced(node)        # the tokens no choice is left about: the line, then "So:"
    constraint.allowed(node)                    # [id of " pick", id of " place", ...]: the logits' mask here
    node = constraint.advance(node, token)      # after the decoder chose one

The automaton is a trie over the token ids of every plan the line allows: the line, then
"So: <subtask>" for each subtask of policies/plan_grammar.allowed_subtasks, then <eos>. Each plan is
tokenised whole, piece by piece exactly as Pi05Processor.target_ids encodes a training target (the
thought, then "So: <subtask>"), so a byte-level BPE that merges across word boundaries cannot make the
trie disagree with what the model was trained on. A token is allowed where some allowed plan's ids
continue with it; where only one plan's ids continue (the line, "So:", " up the", " block<eos>"), the
span is forced and the decoder appends it in one pass (Pi05Model.generate's `constraints`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from policies.pi05.processor import Pi05Processor
from policies.plan_grammar import allowed_subtasks
from policies.planning import PLAN_SEPARATOR
from policies.scene_line import parse_scene

Node = dict  # token id -> the next Node; {} after <eos>


class PlanConstraint:
    """A trie over the token-id sequences of the allowed plans (each ends with <eos>)."""

    def __init__(self, sequences: Iterable[Sequence[int]], eos_id: int):
        self.root: Node = {}
        self.eos_id = eos_id
        self.longest = 0
        for ids in sequences:
            if not ids or ids[-1] != eos_id or eos_id in ids[:-1]:
                raise ValueError(f"an allowed plan's ids end with <eos> ({eos_id}) and hold it only there: {list(ids)}")
            node = self.root
            for token in ids:
                node = node.setdefault(int(token), {})
            self.longest = max(self.longest, len(ids))
        if not self.root:
            raise ValueError("a plan constraint needs at least one allowed plan")

    @classmethod
    def for_line(cls, processor: Pi05Processor, line: str) -> "PlanConstraint":
        """The plans a grounded planner may write after this scene line (SceneParseError if it is not one)."""
        scene = parse_scene(line)
        head = processor.encode(line)
        tails = (processor.encode(f"{PLAN_SEPARATOR.strip()} {s.text}") for s in allowed_subtasks(scene))
        return cls((head + tail + [processor.cfg.eos_id] for tail in tails), processor.cfg.eos_id)

    def allowed(self, node: Node) -> list[int]:
        """The tokens that may come next (empty after <eos>)."""
        return list(node)

    def advance(self, node: Node, token: int) -> Node:
        try:
            return node[int(token)]
        except KeyError:
            raise ValueError(f"token {token} is not allowed here (allowed: {sorted(node)})") from None

    def forced(self, node: Node) -> tuple[list[int], Node]:
        """The tokens that must follow `node` (while exactly one may come next), and the node after them."""
        span: list[int] = []
        while len(node) == 1:
            token, node = next(iter(node.items()))
            span.append(token)
        return span, node

    def accepts(self, ids: Sequence[int]) -> bool:
        """Is `ids` (after <bos>, through <eos>) one of the allowed plans?"""
        node = self.root
        for token in ids:
            if int(token) not in node:
                return False
            node = node[int(token)]
        return not node
