"""Long-horizon task families built from the primitives, and the suites that group them.

    layout.py    what a scene holds and the placer that lays it out
    family.py    TaskFamily, TaskInstance (groups of subtasks, done flags), the registry
    bowls.py stacking.py drawer.py push.py   the `base` suite's families
The `coaching` suite registers from agent/envs/coaching_tasks.py.
"""

from __future__ import annotations

from agent.envs.tasks.bowls import PutColorInBowl, SortIntoBowls, StackInBowl, SwapBowls
from agent.envs.tasks.drawer import BlockInDrawerAndClose, ClearTableIntoDrawer
from agent.envs.tasks.family import (  # noqa: F401  (the package's public names)
    COLOR_PATTERN,
    FAMILIES,
    SUITES,
    Group,
    TaskFamily,
    TaskInstance,
    TaskSpecError,
    bowl_and_maybe_another,
    left_to_right,
    move,
    pick_colors,
    register_family,
)
from agent.envs.tasks.layout import (  # noqa: F401
    COLOR_NAMES,
    BlockSpec,
    BowlSpec,
    Layout,
    LayoutBuilder,
    excluded,
    other_colors,
)
from agent.envs.tasks.push import PushToSide
from agent.envs.tasks.stacking import StackThree, TowerOfN

for _family in (PutColorInBowl(), SortIntoBowls(), StackThree(), TowerOfN(), BlockInDrawerAndClose(),
                ClearTableIntoDrawer(), PushToSide(), SwapBowls(), StackInBowl()):
    register_family(_family)


def get_family(name: str) -> TaskFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; valid families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def get_suite(name: str) -> list[str]:
    if name not in SUITES or not SUITES[name]:
        valid = [s for s, members in SUITES.items() if members]
        raise ValueError(f"unknown or empty suite {name!r}; valid suites: {', '.join(valid)}")
    return SUITES[name]


def parse_task(text: str, families: list[str] | None = None) -> tuple[str, dict]:
    """(family, params) for a free-text task, or a ValueError listing the forms understood."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the task text is empty")
    for name in families or list(FAMILIES):
        params = FAMILIES[name].parse(text)
        if params is not None:
            return name, params
    examples = "\n  ".join(FAMILIES[n].example() for n in (families or list(FAMILIES)))
    raise ValueError(f"cannot understand the task {text!r}. Tasks look like:\n  {examples}")
