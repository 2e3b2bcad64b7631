"""Chain-of-thought and prompt templates as versioned data files, read by policies."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=None)
def load(name: str) -> dict:
    """Load `prompts/<name>.toml`. Each file carries a top-level `version` key."""
    text = resources.files(__package__).joinpath(f"{name}.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    if "version" not in data:
        raise ValueError(f"prompts/{name}.toml has no `version` key")
    return data
