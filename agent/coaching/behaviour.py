"""What the scripted coach believes the task needs: the `IntendedBehaviour` hook and its stock answers.

    None                       ReferenceBehaviour: the env's reference decomposition
    callable(info, world)      FamilyBehaviour(next_subtask=...): the next subtask(s), or None
    an IntendedBehaviour       `.allowed_next(info, world) -> list[str]`, `.rules(info, world)`

`as_behaviour` turns any of these into an IntendedBehaviour (agent/coaching/scripted.py takes them,
or a mapping family -> one of them, as `intended=`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from agent.coaching import vocab
from policies.rules import Rule


@runtime_checkable
class IntendedBehaviour(Protocol):
    def allowed_next(self, info: dict, world: Any) -> list[str]:
        """Canonical subtasks acceptable as the next step, preferred first ([] when done)."""
        ...

    def rules(self, info: dict, world: Any) -> Sequence[Rule]:
        """Rules of the episode the coach enforces."""
        ...


class ReferenceBehaviour:
    """The env's reference decomposition, honouring any order its dependency groups allow."""

    def allowed_next(self, info: dict, world: Any) -> list[str]:
        task = getattr(world, "task", None)
        if task is not None and hasattr(task, "group_flags") and getattr(task, "groups", None):
            return _allowed_from_groups(task, world)
        subtasks = list(info.get("subtasks", []))
        index = info.get("subtask_index")
        if index is None:
            done = list(info.get("subtasks_done", []))
            index = next((i for i, d in enumerate(done) if not d), len(subtasks))
        return [subtasks[index]] if 0 <= index < len(subtasks) else []

    def rules(self, info: dict, world: Any) -> Sequence[Rule]:
        return ()


def _allowed_from_groups(task: Any, world: Any) -> list[str]:
    flags = task.group_flags(world)
    group_done = [all(f) for f in flags]
    held = getattr(world, "held", None)
    allowed: list[str] = []
    for i, group in enumerate(task.groups):
        if group_done[i] or not all(group_done[d] for d in group.deps):
            continue
        j = next(k for k, f in enumerate(flags[i]) if not f)
        allowed.append(group.subtasks[j].text)
    if held is not None:
        # with a block in the jaws only that block's own next step makes sense
        own = [g.subtasks[next(k for k, f in enumerate(flags[i]) if not f)].text
               for i, g in enumerate(task.groups)
               if not group_done[i] and g.obj == held and all(group_done[d] for d in g.deps)]
        return own or [vocab.PUT_DOWN]
    return allowed


@dataclass
class FamilyBehaviour:
    """A family's intended behaviour: a next-subtask function and/or fixed rules."""

    next_subtask: Callable[[dict, Any], str | Sequence[str] | None] | None = None
    fixed_rules: Sequence[Rule] = ()

    def allowed_next(self, info: dict, world: Any) -> list[str]:
        if self.next_subtask is None:
            return ReferenceBehaviour().allowed_next(info, world)
        out = self.next_subtask(info, world)
        if out is None:
            return []
        return [out] if isinstance(out, str) else list(out)

    def rules(self, info: dict, world: Any) -> Sequence[Rule]:
        return tuple(self.fixed_rules)


IntendedSpec = Any  # None | callable | IntendedBehaviour | Mapping[str, callable | IntendedBehaviour]


def as_behaviour(spec: Any) -> IntendedBehaviour:
    if spec is None:
        return ReferenceBehaviour()
    if isinstance(spec, IntendedBehaviour):
        return spec
    if callable(spec):
        return FamilyBehaviour(next_subtask=spec)
    raise TypeError(f"intended must be None, a callable(info, world), an IntendedBehaviour or a mapping "
                    f"family -> one of those; got {type(spec).__name__}")
