"""Session reader: clear errors for foreign / newer / corrupt sessions, tolerance of crash tails."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sessions.frames import frame_path, scan_frames
from sessions.reader import SessionError, find_sessions, iter_sessions, read_session
from sessions.synthetic import synthetic_image, write_synthetic_session


@pytest.fixture(scope="module")
def clean_session(tmp_path_factory):
    return write_synthetic_session(tmp_path_factory.mktemp("clean") / "s", episodes=2, steps=20, image_size=16, seed=1)


def _header(path):
    return json.loads((path / "session.json").read_text())


def test_foreign_directory(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(SessionError, match=r"notes: not a hivla session \(no session.json\)"):
        read_session(tmp_path / "notes")
    with pytest.raises(SessionError, match="no such session"):
        read_session(tmp_path / "missing")


def test_foreign_header(session):
    (session / "session.json").write_text(json.dumps({"format": "lerobot", "version": 3}))
    with pytest.raises(SessionError, match=r"session.json: not a hivla session header \(format 'lerobot'"):
        read_session(session)


def test_newer_schema_version(session):
    header = _header(session)
    header["schema_version"] = 99
    header["some_future_field"] = 1
    (session / "session.json").write_text(json.dumps(header))
    with pytest.raises(SessionError, match="schema 99, newer than this hivla reads"):
        read_session(session)


def test_corrupt_header(session):
    (session / "session.json").write_text('{"format": "hivla-sess')
    with pytest.raises(SessionError, match="corrupt header, not valid JSON"):
        read_session(session)
    header = _header_from(session)
    del header["cameras"]
    (session / "session.json").write_text(json.dumps(header))
    with pytest.raises(SessionError, match="invalid header: cameras"):
        read_session(session)


def _header_from(path):
    return {"format": "hivla-session", "schema_version": 1, "session_id": "x", "created": "now", "hivla_version": "0",
            "high_level": "oracle", "low_level": "expert", "cameras": {"front": [16, 16], "wrist": [16, 16]},
            "state_names": [], "action_names": []}


def test_corrupt_line_in_the_middle_costs_only_that_record(session):
    lines = (session / "events.jsonl").read_bytes().split(b"\n")
    at = next(i for i, ln in enumerate(lines) if json.loads(ln)["type"] == "step" and json.loads(ln)["step"] == 5)
    lines[at] = b'{"type": "step", "episode": 0, "step": "garbage"}'
    (session / "events.jsonl").write_bytes(b"\n".join(lines))
    s = read_session(session)
    ep = s.episodes[0]
    assert [st.step for st in ep.steps] == [k for k in range(20) if k != 5]
    assert ep.end is not None and not ep.truncated  # the end is intact: the outcome stands
    assert any(f"events.jsonl:{at + 1}: damaged step record dropped" in d for d in ep.dropped)
    assert len(s.episodes[1].steps) == 20


def test_missing_event_log(session):
    (session / "events.jsonl").unlink()
    with pytest.raises(SessionError, match="events.jsonl: missing"):
        read_session(session)


def test_torn_last_line_is_dropped(session):
    data = (session / "events.jsonl").read_bytes()
    (session / "events.jsonl").write_bytes(data + b'{"type": "step", "episode": 1, "st')
    s = read_session(session)
    assert len(s.episodes[1].steps) == 20 and s.truncated
    # and a zero-filled tail, as a power loss can leave
    (session / "events.jsonl").write_bytes(data + b"\x00" * 4096)
    assert len(read_session(session).episodes[1].steps) == 20


def test_torn_frame_record_drops_its_step_and_later_events(session):
    path = frame_path(session, 1, "front")
    index = scan_frames(path)
    cut = index.entries[15].offset + 3  # tear frame 15's payload
    path.write_bytes(path.read_bytes()[:cut])
    s = read_session(session)
    ep = s.episodes[1]
    assert [st.step for st in ep.steps] == list(range(15))
    assert ep.dropped_steps == 5
    assert all(p.step <= 14 for p in ep.plans) and all(c.step <= 14 for c in ep.corrections)
    assert ep.frames("front").shape == (15, 16, 16, 3) and ep.frames("wrist").shape == (15, 16, 16, 3)
    assert any("torn record" in w for w in s.warnings)
    assert len(s.episodes[0].steps) == 20


def test_a_corrupt_frame_record_costs_only_its_step(session):
    path = frame_path(session, 0, "wrist")
    data = bytearray(path.read_bytes())
    entry = scan_frames(path).entries[10]
    data[entry.offset + entry.length // 2] ^= 0xFF  # a flipped bit in frame 10's payload
    path.write_bytes(bytes(data))
    ep = read_session(session).episodes[0]
    assert [st.step for st in ep.steps] == [k for k in range(20) if k != 10]
    for i, st in enumerate(ep.steps):
        np.testing.assert_array_equal(ep.frame("wrist", i), synthetic_image(1, 0, st.step, "wrist", 16))
    assert ep.end is not None and not ep.truncated
    assert any("steps whose frames are missing or damaged (steps 10)" in d for d in ep.dropped)


def test_damage_at_the_start_of_a_frame_file_costs_only_those_records(session):
    path = frame_path(session, 0, "wrist")
    data = bytearray(path.read_bytes())
    for k in range(4, 14):  # 10 bytes flipped near the start: the first record's header
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))
    s = read_session(session)
    ep = s.episodes[0]
    assert [st.step for st in ep.steps] == list(range(1, 20))
    assert any("wrist.bin: skipped" in d for d in ep.dropped)


def test_lost_tail_steps_mark_the_episode_truncated_with_unknown_outcome(session):
    lines = (session / "events.jsonl").read_bytes().split(b"\n")
    kept = [ln for ln in lines if not (ln.startswith(b'{"type":"step"') or ln.startswith(b'{"type": "step"'))
            or json.loads(ln)["episode"] != 1 or json.loads(ln)["step"] < 15]
    assert len(kept) < len(lines)
    (session / "events.jsonl").write_bytes(b"\n".join(kept))
    ep = read_session(session).episodes[1]
    assert [st.step for st in ep.steps] == list(range(15))
    assert ep.truncated and ep.end is None and ep.success is None and ep.recorded_end.steps == 20
    assert all(c.step <= 14 for c in ep.corrections)


def test_unknown_camera(session):
    with pytest.raises(KeyError, match="no camera 'side'"):
        read_session(session).episodes[0].frames("side")


def test_find_and_iter_sessions(clean_session, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(clean_session, root / "a")
    shutil.copytree(clean_session, root / "nested" / "b")
    (root / "junk").mkdir()
    (root / "junk" / "file.txt").write_text("x")
    found = find_sessions([root, root / "a"])
    assert [p.name for p in found] == ["a", "b"]
    assert [s.path.name for s in iter_sessions([root])] == ["a", "b"]
    errors = []
    sessions = list(iter_sessions([root / "a", root / "junk"], on_error=lambda p, e: errors.append((p, e))))
    assert len(sessions) == 1 and errors[0][0] == root / "junk" and "not a hivla session" in str(errors[0][1])
    with pytest.raises(SessionError):
        list(iter_sessions([root / "junk"]))
