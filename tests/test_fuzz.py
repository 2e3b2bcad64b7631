"""Property-based fuzzing (hypothesis) of what reads untrusted input: the correction classifier,
the `--script` parser and the session reader (random truncation and byte flips).

The default run is bounded to a few seconds (FAST examples a target); the `slow` variants run
SLOW >= 10,000 generated inputs a target (`pytest -m slow tests/test_fuzz.py`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.coaching.classify import ReferenceContext, classify
from agent.console.controller import check_line
from agent.console.script import MAX_SCRIPT_STEP, SPACING_STEPS, ScriptError, parse_script
from agent.inputs import Command, Reply
from policies.types import Correction, CorrectionKind
from sessions.frames import HEADER_SIZE, frame_path, scan_frames
from sessions.reader import SessionError, read_session
from sessions.synthetic import write_synthetic_session

FAST = 60
SLOW = 10_000


def fuzz(strategy, check, examples: int) -> None:
    """Run `check` on `examples` inputs drawn from `strategy` (no example database: reproducible)."""

    @settings(max_examples=examples, deadline=None, database=None, derandomize=examples == FAST,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(strategy)
    def run(value):
        check(value)

    run()


# ------------------------------------------------------------------ the correction classifier

WORDS = ["no", "not", "the", "blue", "red", "green", "block", "bowl", "drawer", "first", "a", "bit", "left", "right",
         "lower", "up", "stop", "wait", "go", "on", "never", "use", "leave", "alone", "pick", "place", "put", "in",
         "open", "close", "gripper", "yes", "good", "/pause", "/resume", "/undo", "/task", "/reset", "/override",
         "/not", "/rule", "/nudge", "/stop", "/good", "/q", "override:", "not:", "rule:", "that", "one", "more", "😀", "👍"]
texts = st.one_of(
    st.text(max_size=120),
    st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join),
    st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=6)), max_size=8).map(" ".join),
)
contexts = st.one_of(st.none(), st.builds(
    ReferenceContext,
    current_subtask=st.one_of(st.none(), st.sampled_from(["pick up the red block", "place it in the blue bowl", "open the drawer"])),
    pending_subtasks=st.lists(st.sampled_from(["pick up the green block", "place it in the red bowl", "close the drawer"]),
                              max_size=3).map(tuple),
))


def check_classifier(case) -> None:
    text, context = case
    result = classify(text, context)
    assert isinstance(result, (Correction, Command, Reply)), type(result)
    if isinstance(result, Reply):
        # the classifier's own safety net catches its bugs: a fuzzed input must never reach it
        assert not result.reply.startswith("could not read that input"), (text, result.reply)
    if isinstance(result, Correction):
        assert isinstance(result.kind, CorrectionKind) and isinstance(result.text, str)
        assert result.subtask is None or isinstance(result.subtask, str)
    assert classify(text, context) == result  # deterministic
    # what the console would send: checked first, then classified; never raises either
    line, problem = check_line(text)
    assert (line is None) != (problem is None)
    if line is not None:
        classify(line, context)


def test_fuzz_classifier():
    fuzz(st.tuples(texts, contexts), check_classifier, FAST)


@pytest.mark.slow
def test_fuzz_classifier_slow():
    fuzz(st.tuples(texts, contexts), check_classifier, SLOW)


# ------------------------------------------------------------------ the --script parser

script_texts = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(
    lambda t: t.strip() and not t.strip().startswith(("#", "@")) and "\n" not in t and "\r" not in t
    and t == t.strip() and len(t.splitlines()) == 1)


def check_script_random(lines: list[str]) -> None:
    """Any text: a schedule that keeps its promises, or a ScriptError naming a line."""
    try:
        script = parse_script(lines)
    except ScriptError as err:
        assert str(err).startswith("script line "), err
        return
    said = [raw for raw in lines if raw.rstrip("\r\n").strip() and not raw.lstrip().startswith("#")]
    assert len(script) == len(said)
    assert all(0 <= a.step <= b.step for a, b in zip(script, script[1:]))
    assert all(0 <= s.step <= MAX_SCRIPT_STEP + len(lines) * SPACING_STEPS for s in script)
    assert all(s.text.strip() for s in script) and [s.lineno for s in script] == sorted({s.lineno for s in script})


raw_lines = st.lists(st.one_of(
    st.text(max_size=30),
    st.builds(lambda n, t: f"@{n} {t}", st.integers(-10, 2 * MAX_SCRIPT_STEP), st.text(max_size=10)),
    st.builds(lambda w, t: f"@{w} {t}", st.text(max_size=5), st.text(max_size=10)),
    st.sampled_from(["", "# comment", "/pause", "@", "@5", "@ 5 x", "@05 x", "  @7 indented"]),
), max_size=12)


def check_script_roundtrip(plan: list[tuple[int | None, str]]) -> None:
    """A well-formed script reads back exactly as written: each line at its step, in order."""
    lines, expected, at, last = [], [], SPACING_STEPS, None
    for gap, text in plan:
        if gap is None:
            lines.append(text)
            step = at
        else:
            step = (last if last is not None else 0) + gap
            lines.append(f"@{step} {text}")
        expected.append((step, text))
        last, at = step, step + SPACING_STEPS
    script = parse_script(lines)
    assert [(s.step, s.text) for s in script] == expected


plans = st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 500)), script_texts), max_size=10)


def test_fuzz_script_parser():
    fuzz(raw_lines, check_script_random, FAST)
    fuzz(plans, check_script_roundtrip, FAST)


@pytest.mark.slow
def test_fuzz_script_parser_slow():
    fuzz(raw_lines, check_script_random, SLOW)
    fuzz(plans, check_script_roundtrip, SLOW)


# ------------------------------------------------------------------ the session reader


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A small session and what it reads as, plus a work copy the fuzz cases damage and restore."""
    root = tmp_path_factory.mktemp("fuzz")
    clean = write_synthetic_session(root / "clean", episodes=2, steps=12, image_size=8, seed=5)
    work = shutil.copytree(clean, root / "work")
    session = read_session(clean)
    assert not session.warnings
    files = {"events": Path("events.jsonl"),
             **{f"{cam}{ep}": frame_path(Path(), ep, cam) for ep in range(2) for cam in ("front", "wrist")}}
    return {"work": work, "session": session, "files": files,
            "bytes": {k: (clean / rel).read_bytes() for k, rel in files.items()}}


damage = st.tuples(
    st.sampled_from(["events", "front0", "wrist0", "front1", "wrist1"]),
    st.sampled_from(["truncate", "flip", "invalid"]),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=6),
)


def _damaged(original: bytes, how: str, edits: list[tuple[float, int]]) -> tuple[bytes, list[int]]:
    """The damaged bytes and the positions changed (for truncation: the cut)."""
    if how == "truncate":
        cut = int(edits[0][0] * len(original))
        return original[:cut], [cut]
    data = bytearray(original)
    positions = sorted({int(at * len(data)) for at, _ in edits})
    for (at, value), pos in zip(edits, positions):
        data[pos] = 0xFF if how == "invalid" else data[pos] ^ value  # 0xFF is never valid UTF-8
    return bytes(data), positions


def _lost_bound(pristine, name: str, how: str, positions: list[int], original: bytes) -> dict[int, int] | None:
    """For damage the reader can see (CRC-checked frames, invalid-UTF-8 lines): the most steps each
    episode may lose. None where the damage can leave valid-looking records (plain flips in JSON)."""
    session = pristine["session"]
    if name == "events":
        if how == "flip":
            return None
        line_starts = [0] + [i + 1 for i, b in enumerate(original) if b == 0x0A]
        touched: set[int] = set()
        for pos in positions:
            line = max(k for k, start in enumerate(line_starts) if start <= pos)
            touched.add(line)
            if original[pos] == 0x0A:
                touched.add(line + 1)  # the newline itself: the next line is merged into this one
        if how == "truncate":
            touched |= set(range(max(k for k, s in enumerate(line_starts) if s <= positions[0]), len(line_starts)))
        import json

        lines = original.split(b"\n")
        bound: dict[int, int] = {}
        for ep in session.episodes:
            mine = [k for k, ln in enumerate(lines) if ln and json.loads(ln).get("episode") == ep.episode]
            if any(k in touched for k in mine if json.loads(lines[k])["type"] == "episode_start"):
                bound[ep.episode] = len(ep.steps)  # its start is gone: the episode may go
            else:  # each damaged step line costs its step, nothing more (a lost end costs no step)
                bound[ep.episode] = sum(1 for k in mine if k in touched and json.loads(lines[k])["type"] == "step")
        return bound
    ep_number = int(name[-1])
    entries = scan_frames(pristine["work"].parent / "clean" / pristine["files"][name]).entries
    if how == "truncate":
        lost = sum(1 for e in entries.values() if e.offset + e.length > positions[0])
    else:
        lost = sum(1 for e in entries.values()
                   if any(e.offset - HEADER_SIZE <= p < e.offset + e.length for p in positions))
    return {ep.episode: (lost if ep.episode == ep_number else 0) for ep in session.episodes}


def check_reader(pristine, case) -> None:
    name, how, edits = case
    work, rel = pristine["work"], pristine["files"][name]
    original = pristine["bytes"][name]
    data, positions = _damaged(original, how, edits)
    (work / rel).write_bytes(data)
    try:
        try:
            session = read_session(work)
        except SessionError as err:  # the header is intact: only a missing event log may refuse
            raise AssertionError(f"a damaged {name} rejected the whole session: {err}") from err
        before = {ep.episode: ep for ep in pristine["session"].episodes}
        lost_total = 0
        for ep in session.episodes:
            numbers = [s.step for s in ep.steps]
            assert numbers == sorted(set(numbers))  # in order, each once
            for cam in ("front", "wrist"):
                assert ep.frames(cam).shape[0] == len(ep.steps)  # every kept step has its images
            last = numbers[-1] if numbers else -1
            if ep.end is not None:
                assert all(c.step < ep.end.steps for c in ep.corrections)
                assert all(p.step < ep.end.steps or p.step == 0 for p in ep.plans)
            if ep.truncated:
                assert ep.end is None and ep.success is None
                assert all(c.step <= last for c in ep.corrections)
            if ep.episode in before:
                lost = len(before[ep.episode].steps) - len(ep.steps)
                lost_total += max(0, lost)
                if lost > 0:
                    assert ep.dropped or ep.truncated or session.warnings, "steps lost without a word"
        lost_total += sum(len(ep.steps) for n, ep in before.items() if n not in {e.episode for e in session.episodes})
        if data != original and lost_total:
            assert session.warnings, "data lost silently"
        bound = _lost_bound(pristine, name, how, positions, original)
        if bound is not None:
            kept = {ep.episode: len(ep.steps) for ep in session.episodes}
            for n, ep in before.items():
                assert len(ep.steps) - kept.get(n, 0) <= bound[n], (n, len(ep.steps), kept.get(n), bound[n])
    finally:
        (work / rel).write_bytes(original)


def test_fuzz_session_reader(pristine):
    fuzz(damage, lambda case: check_reader(pristine, case), FAST)


@pytest.mark.slow
def test_fuzz_session_reader_slow(pristine):
    fuzz(damage, lambda case: check_reader(pristine, case), SLOW)
