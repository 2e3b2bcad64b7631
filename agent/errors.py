"""What the command line treats as a user's mistake rather than a bug.

A UserError (or one of the library errors that name a bad input: a policy spec, a checkpoint, a
session, an export, a script) is printed as one line naming the problem and the fix, with exit
code 2 and no traceback; `hivla --debug VERB ...` shows the traceback as well.
"""

from __future__ import annotations

import sys

# module -> names of the exceptions in it that always mean bad input from the user. Looked up only
# in modules already imported, so the CLI does not import torch to recognise a CheckpointError.
USER_ERRORS: dict[str, tuple[str, ...]] = {
    "agent.errors": ("UserError",),
    "agent.specs": ("SpecError",),
    "agent.console.script": ("ScriptError",),
    "agent.console.session": ("CoachSessionError",),
    "policies.checkpoint": ("CheckpointError",),
    "sessions.reader": ("SessionError",),
    "sessions.export.common": ("ExportError",),
    "sessions.rerun_log": ("RerunError",),
}


class UserError(Exception):
    """A mistake in what the user asked for; the message says what is wrong and how to fix it."""


def is_user_error(err: BaseException) -> bool:
    if isinstance(err, UserError):
        return True
    if isinstance(err, OSError) and getattr(err, "filename", None) is not None:
        return True  # a path the user gave that cannot be read or written
    for module_name, names in USER_ERRORS.items():
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for name in names:
            cls = getattr(module, name, None)
            if isinstance(cls, type) and isinstance(err, cls):
                return True
    return False


# How to fix errors whose message names only the problem.
_FIXES = {
    "CheckpointError": "point the spec at a complete checkpoint directory written by `hivla train` "
                       "(config.json, model.safetensors, tokenizer.json, norm_stats.json)",
}


def one_line(err: BaseException) -> str:
    """The error as one line: its message, or for an OSError the path and the reason; plus the fix
    where the message does not say it."""
    if isinstance(err, OSError) and getattr(err, "filename", None) is not None:
        return f"{err.filename}: {err.strerror or err}"
    text = " ".join(str(err).split()) or type(err).__name__
    fix = next((f for cls in type(err).__mro__ if (f := _FIXES.get(cls.__name__))), None)
    return f"{text}; {fix}" if fix else text
