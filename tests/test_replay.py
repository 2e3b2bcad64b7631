"""hivla replay: the timeline text, the annotated video, and errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

from agent.cli import main as hivla
from sessions.reader import read_session
from sessions.replay import render_video
from sessions.synthetic import write_synthetic_session
from sessions.textdraw import draw_text, glyph, wrap
from sessions.video import read_video


@pytest.fixture(scope="module")
def session_dir(tmp_path_factory):
    return write_synthetic_session(tmp_path_factory.mktemp("replay") / "s", episodes=2, steps=20, image_size=32, seed=5)


def test_timeline_lists_plans_corrections_and_outcomes(session_dir, capsys):
    assert hivla(["replay", str(session_dir)]) == 0
    out = capsys.readouterr().out
    session = read_session(session_dir)
    for ep in session.episodes:
        assert ep.task in out.replace("\n", " ") or ep.task[:30] in out
    for kind in {c.kind.value for ep in session.episodes for c in ep.corrections}:
        assert f"correction {kind}" in out
    assert "plan (start, model)" in out and "(withdrawn)" in out
    assert "outcome: success" in out and "outcome: failure (timeout)" in out


def test_one_episode_with_steps(session_dir, capsys):
    assert hivla(["replay", str(session_dir), "--episode", "1", "--steps"]) == 0
    out = capsys.readouterr().out
    assert "episode 1" in out and "episode 0 " not in out
    assert out.count("│ step ") >= 20


def test_video_has_one_annotated_frame_per_step(session_dir, tmp_path, capsys):
    out = tmp_path / "replay.mp4"
    assert hivla(["replay", str(session_dir), "--video", str(out), "--codec", "lossless"]) == 0
    video = read_video(out)
    assert video.shape[0] == 40 and video.shape[2] == 512
    # the top is the camera image, upscaled 16x (nearest neighbour, lossless codec)
    front = read_session(session_dir).episodes[0].frames("front")
    np.testing.assert_array_equal(video[3, 8:512:16, 8:512:16], front[3])
    # the caption panel below has text in it
    panel = video[:, 512:]
    assert (panel.max(axis=-1) > 100).any(axis=(1, 2)).all()
    # refuses to overwrite without --force
    assert hivla(["replay", str(session_dir), "--video", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err


def test_corrections_change_the_picture(session_dir, tmp_path):
    session = read_session(session_dir)
    out = tmp_path / "v.mp4"
    render_video(session, out, episodes=[0], codec="lossless")
    video = read_video(out)
    first = session.episodes[0].corrections[0].step
    # a coloured border marks the half second after a correction
    assert (video[first, :2, :, 0] > 200).all() and not (video[0, :2, :, 0] > 200).all()


def test_bad_input(session_dir, tmp_path, capsys):
    assert hivla(["replay", str(tmp_path / "nothing")]) == 2
    assert "no such session" in capsys.readouterr().err
    assert hivla(["replay", str(session_dir), "--episode", "7"]) == 2
    assert "no episode [7]" in capsys.readouterr().err
    assert hivla(["replay", str(session_dir), "--video", str(tmp_path / "x.mp4"), "--camera", "side"]) == 2
    assert "no camera 'side'" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_bitmap_font():
    assert glyph("A").shape == (7, 5) and glyph("A").any()
    assert not glyph(" ").any()
    assert (glyph("\u2603") == glyph("\u2604")).all()  # unknown characters draw a box
    image = np.zeros((20, 60, 3), np.uint8)
    draw_text(image, 2, 2, "Hi!", (255, 0, 0), scale=2)
    assert image[..., 0].any() and not image[..., 1].any()
    draw_text(image, 55, 15, "clipped at the edge", (0, 255, 0))  # must not raise
    assert wrap("pick up the red block", 10) == ["pick up", "the red", "block"]
    assert wrap("abcdefghijkl", 5) == ["abcde", "fghij", "kl"]
