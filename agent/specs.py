"""Policy spec strings -> policy objects.

    oracle            privileged scripted planner (high level)
    expert            privileged scripted executor (low level)
    pi05:PATH         a pi05 checkpoint directory (either level)
    vla:PATH          a low-level VLA checkpoint directory (low level)
    openpi:HOST:PORT[:ROBOT]  a remote openpi policy server (low level); ROBOT names the observation and
                      action mapping (hivla, libero, droid, or a .toml; default hivla)
    hf:PATH           a local transformers VLM or LM directory, prompted from prompts/ (high level)
    (empty / None)    the shipped defaults: the grounded pi05 planner policies/checkpoints/grounded as
                      high level and the VLA checkpoint policies/checkpoints/vla as low level

The same model instance is shared when both levels name the same checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from policies.base import HighLevelPolicy, LowLevelPolicy

CHECKPOINTS = Path(__file__).resolve().parent.parent / "policies" / "checkpoints"
# the pi05 high level: the grounded planner, which writes what it sees before it decides
# (policies/checkpoints/grounded/MODEL_CARD.md; it replaced `small`, which stays shipped)
SHIPPED_CHECKPOINT = CHECKPOINTS / "grounded"
SHIPPED_VLA = CHECKPOINTS / "vla"  # the low-level VLA


def default_high_level_spec() -> str:
    # No silent fallback to the privileged oracle: a missing shipped checkpoint is the loader's
    # one-line error, so a run never reports the oracle's numbers as the learned planner's.
    return f"pi05:{SHIPPED_CHECKPOINT}"


def default_low_level_spec() -> str:
    # The learned VLA (policies/checkpoints/vla/MODEL_CARD.md) executes by default, so learned models act
    # at both levels; `--low-level expert` is the privileged reference.
    return f"vla:{SHIPPED_VLA}"


class SpecError(ValueError):
    """A policy spec string that names nothing hivla can build."""


_pi05_models: dict[tuple[str, str, str], object] = {}
_vla_models: dict[tuple[str, str, str], object] = {}


def _pi05_path(spec: str, arg: str, flag: str) -> str:
    """The checkpoint a 'pi05:PATH' spec names; 'pi05:' alone is refused rather than silently loading
    the shipped one."""
    if not arg:
        raise SpecError(f"{spec!r} names no checkpoint directory; write pi05:PATH "
                        f"(e.g. pi05:{SHIPPED_CHECKPOINT}), or omit {flag} for the default")
    return arg


def _load_pi05(path: str, device: str, dtype: str):
    key = (str(Path(path).resolve()), device, dtype)
    if key not in _pi05_models:
        from policies.pi05.policy import load_pi05  # heavy import (torch)

        _pi05_models[key] = load_pi05(path, device=device, dtype=dtype)
    return _pi05_models[key]


def _load_vla(path: str, device: str, dtype: str):
    key = (str(Path(path).resolve()), device, dtype)
    if key not in _vla_models:
        from policies.vla.policy import load_vla  # heavy import (torch)

        _vla_models[key] = load_vla(path, device=device, dtype=dtype)
    return _vla_models[key]


def resolve_specs(high_level: str | None, low_level: str | None) -> tuple[str, str]:
    """The spec strings that `make_high_level` / `make_low_level` build for these (defaults filled in)."""
    return high_level or default_high_level_spec(), low_level or default_low_level_spec()


def describe_spec(spec: str) -> str:
    """A spec for people: a checkpoint path inside the working directory shown relative, and whether
    the policy is learned or a privileged reference ("vla:policies/checkpoints/vla (learned)")."""
    kind, sep, arg = spec.partition(":")
    if kind in ("oracle", "expert"):
        return f"{spec} (privileged)"
    if sep and arg:
        try:
            arg = str(Path(arg).resolve().relative_to(Path.cwd()))
        except ValueError:
            pass
    return f"{kind}{sep}{arg} (learned)" if kind in ("pi05", "vla") else f"{kind}{sep}{arg}"


def _split(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    return kind.strip().lower(), arg.strip()


def make_high_level(spec: str | None = None, *, seed: int = 0, device: str = "cpu", dtype: str = "fp32") -> HighLevelPolicy:
    spec = spec or default_high_level_spec()
    kind, arg = _split(spec)
    if kind == "oracle":
        from agent.envs.oracle import OraclePlanner

        return OraclePlanner(seed=seed)
    if kind == "pi05":
        from policies.pi05.policy import Pi05HighLevel

        return Pi05HighLevel(_load_pi05(_pi05_path(spec, arg, "--high-level"), device, dtype))
    if kind == "hf":
        if not arg:
            raise SpecError(f"{spec!r} names no model directory; write hf:PATH (a local transformers VLM or LM)")
        from policies.hf.planner import HfHighLevel, HfModelError

        try:
            return HfHighLevel(arg, device=device, dtype=dtype)
        except HfModelError as err:
            raise SpecError(str(err)) from err
    raise SpecError(f"unknown high-level spec {spec!r}; expected 'oracle', 'pi05:PATH' or 'hf:PATH'")


def make_low_level(spec: str | None = None, *, seed: int = 0, device: str = "cpu", dtype: str = "fp32") -> LowLevelPolicy:
    spec = spec or default_low_level_spec()
    kind, arg = _split(spec)
    if kind == "expert":
        from agent.envs.expert import ScriptedExpert

        # Not strict: a subtask it cannot do (a person's typo, a learned planner's invention) makes it
        # hold still and report `last_error` instead of ending the session with an exception.
        return ScriptedExpert(seed=seed, strict=False)
    if kind == "pi05":
        from policies.pi05.policy import Pi05LowLevel

        return Pi05LowLevel(_load_pi05(_pi05_path(spec, arg, "--low-level"), device, dtype))
    if kind == "vla":
        from policies.vla.policy import VlaLowLevel

        return VlaLowLevel(_load_vla(arg or str(SHIPPED_VLA), device, dtype))
    if kind == "openpi":
        import os

        from policies.openpi.client import OpenpiLowLevel, RemoteUnavailable, parse_openpi_spec

        try:
            host, port, robot = parse_openpi_spec(arg)
            return OpenpiLowLevel(host, port, robot, api_key=os.environ.get("HIVLA_OPENPI_API_KEY"))
        except (ValueError, RemoteUnavailable) as err:
            raise SpecError(str(err)) from err
    raise SpecError(f"unknown low-level spec {spec!r}; expected 'expert', 'vla:PATH', 'pi05:PATH' or 'openpi:HOST:PORT'")
