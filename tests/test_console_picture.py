"""The README picture's ANSI-to-PNG renderer (docs/console_picture.py) reads tmux captures right."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "console_picture.py"
if not SCRIPT.exists():
    pytest.skip("docs/console_picture.py is not in this tree", allow_module_level=True)


def _load():
    spec = importlib.util.spec_from_file_location("console_picture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


picture = _load()
if not Path(picture.FONT).exists():
    pytest.skip(f"font {picture.FONT} is not installed", allow_module_level=True)


def _cell_colours(png: Path, row: int, col: int) -> tuple[tuple, tuple]:
    """(upper, lower) pixel colour at the middle of a cell's two halves."""
    font = picture.ImageFont.truetype(picture.FONT, picture.FONT_SIZE)
    cell_w = round(font.getlength("M"))
    ascent, descent = font.getmetrics()
    cell_h = ascent + descent + 1
    x, y = 8 + col * cell_w + cell_w // 2, 8 + row * cell_h
    image = Image.open(png).convert("RGB")
    return image.getpixel((x, y + cell_h // 4)), image.getpixel((x, y + 3 * cell_h // 4))


def test_style_carries_over_to_the_next_captured_line(tmp_path):
    # `tmux capture-pane -e` only writes an SGR when a cell's style differs from the previous
    # cell's, across line ends too: a camera row that starts in the colours the row above ended
    # in comes with no escape at all, and must not fall back to the default colours.
    top, bottom = (255, 236, 205), (174, 156, 132)
    ansi = (f"\x1b[38;2;{top[0]};{top[1]};{top[2]}m\x1b[48;2;{bottom[0]};{bottom[1]};{bottom[2]}m▀▀▀\n"
            "▀▀▀\n"
            "\x1b[0mplain\n")
    out = tmp_path / "screen.png"
    picture.render_png(ansi, out)
    for row in (0, 1):
        for col in (0, 2):
            assert _cell_colours(out, row, col) == (top, bottom), (row, col)


def test_reset_returns_to_the_default_colours(tmp_path):
    ansi = "\x1b[38;2;1;2;3m\x1b[48;2;200;100;50m▀\x1b[0m▀\n\x1b[39m\x1b[49m▀\n"
    out = tmp_path / "screen.png"
    picture.render_png(ansi, out)
    assert _cell_colours(out, 0, 0) == ((1, 2, 3), (200, 100, 50))
    assert _cell_colours(out, 0, 1) == (picture.DEFAULT_FG, picture.DEFAULT_BG)
    assert _cell_colours(out, 1, 0) == (picture.DEFAULT_FG, picture.DEFAULT_BG)
