"""Make the README's picture of the coaching console from a real screen.

Runs `hivla coach` with no flags (the newcomer's view: shipped learned models, the default task
and speed) in a private tmux server, presses Enter, says a correction, captures the pane with its
colours (`tmux capture-pane -e -p`) once the view shows what the correction changed, and renders
the captured ANSI text to a PNG with Pillow: a monospace font for the text, and the camera's
half-block characters drawn as exact two-colour cells (a font's '▀' rarely fills its cell).

    .venv/bin/python docs/console_picture.py                  # capture, then render
    .venv/bin/python docs/console_picture.py --from-ans docs/images/coach_console.ans   # render only

Writes docs/images/coach_console.{ans,txt,png}.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"
COLS, ROWS = 150, 44
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
FONT_BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
FONT_SIZE = 15
DEFAULT_FG, DEFAULT_BG = (208, 208, 208), (24, 24, 28)
CORRECTION = "no, pick up the orange block first"

# ---------------------------------------------------------------------- capture


def _tmux(socket: str, *args: str) -> str:
    done = subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise SystemExit(f"tmux {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _wait(socket: str, pattern: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, _tmux(socket, "capture-pane", "-t", "coach", "-p")):
            return
        time.sleep(0.2)
    raise SystemExit(f"{pattern!r} did not appear within {timeout} s")


def capture() -> str:
    """The console's screen, with its colours, a few seconds after a correction changed the plan."""
    socket = f"hivla-picture-{os.getpid()}"
    runs = tempfile.mkdtemp(prefix="hivla-picture-")
    env = f"MUJOCO_GL={os.environ.get('MUJOCO_GL', 'egl')} HIVLA_RUNS_DIR={runs} TERM=xterm-256color"
    command = f"cd {REPO} && env {env} {sys.executable} -m agent.cli coach; sleep 600"
    _tmux(socket, "new-session", "-d", "-s", "coach", "-x", str(COLS), "-y", str(ROWS), command)
    try:
        _wait(socket, r"waiting: press Enter", 180)
        _tmux(socket, "send-keys", "-t", "coach", "Enter")
        _wait(socket, r"step (1[2-9]|[2-9]\d) ", 120)
        _tmux(socket, "send-keys", "-t", "coach", "-l", CORRECTION)
        _tmux(socket, "send-keys", "-t", "coach", "Enter")
        _wait(socket, r"↻ \[override\]", 120)
        time.sleep(1.0)  # let a few more frames move
        screen = _tmux(socket, "capture-pane", "-t", "coach", "-e", "-p")
        _tmux(socket, "send-keys", "-t", "coach", "-l", "/quit")
        _tmux(socket, "send-keys", "-t", "coach", "Enter")
        time.sleep(3)
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, timeout=20)
    return screen


# ---------------------------------------------------------------------- ANSI (SGR) to cells

_SGR = re.compile(r"\x1b\[([0-9;:]*)m")
_BASIC = [(0, 0, 0), (205, 49, 49), (13, 188, 121), (229, 229, 16), (36, 114, 200), (188, 63, 188), (17, 168, 205),
          (229, 229, 229), (102, 102, 102), (241, 76, 76), (35, 209, 139), (245, 245, 67), (59, 142, 234),
          (214, 112, 214), (41, 184, 219), (255, 255, 255)]


def _xterm256(n: int) -> tuple[int, int, int]:
    if n < 16:
        return _BASIC[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return steps[n // 36], steps[(n // 6) % 6], steps[n % 6]
    level = 8 + 10 * (n - 232)
    return level, level, level


# SGR codes that switch a text attribute on or off
_SGR_FLAGS = {1: {"bold": True}, 2: {"dim": True}, 4: {"underline": True}, 7: {"reverse": True}, 9: {"strike": True},
              22: {"bold": False, "dim": False}, 24: {"underline": False}, 27: {"reverse": False}, 29: {"strike": False}}


class _Style:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.fg = self.bg = None
        self.bold = self.dim = self.strike = self.underline = self.reverse = False

    def apply(self, params: str) -> None:
        codes = [int(c) if c else 0 for c in params.replace(":", ";").split(";")] if params else [0]
        i = 0
        while i < len(codes):
            c = codes[i]
            if c == 0:
                self.reset()
            elif c in _SGR_FLAGS:
                for flag, on in _SGR_FLAGS[c].items():
                    setattr(self, flag, on)
            elif c in (38, 48) and i + 1 < len(codes):
                if codes[i + 1] == 2 and i + 4 < len(codes):
                    colour, i = tuple(codes[i + 2:i + 5]), i + 4
                elif codes[i + 1] == 5 and i + 2 < len(codes):
                    colour, i = _xterm256(codes[i + 2]), i + 2
                else:
                    colour = None
                if c == 38:
                    self.fg = colour
                else:
                    self.bg = colour
            elif c == 39:
                self.fg = None
            elif c == 49:
                self.bg = None
            elif 30 <= c <= 37 or 90 <= c <= 97:
                self.fg = _BASIC[(c - 30) if c < 90 else (c - 90 + 8)]
            elif 40 <= c <= 47 or 100 <= c <= 107:
                self.bg = _BASIC[(c - 40) if c < 100 else (c - 100 + 8)]
            i += 1

    def colours(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        fg, bg = self.fg or DEFAULT_FG, self.bg or DEFAULT_BG
        if self.reverse:
            fg, bg = bg, fg
        if self.dim:
            fg = tuple((a + b) // 2 for a, b in zip(fg, bg))
        return fg, bg


def render_png(ansi: str, out: Path) -> None:
    font, bold = ImageFont.truetype(FONT, FONT_SIZE), ImageFont.truetype(FONT_BOLD, FONT_SIZE)
    cell_w = round(font.getlength("M"))
    ascent, descent = font.getmetrics()
    cell_h = ascent + descent + 1
    lines = ansi.rstrip("\n").split("\n")
    width = max(COLS, max((len(_SGR.sub("", line)) for line in lines), default=0))
    image = Image.new("RGB", (width * cell_w + 16, len(lines) * cell_h + 16), DEFAULT_BG)
    draw = ImageDraw.Draw(image)
    style = _Style()
    for row, line in enumerate(lines):
        col, pos = 0, 0
        for match in [*_SGR.finditer(line), None]:
            text = line[pos:match.start()] if match else line[pos:]
            for ch in text:
                x, y = 8 + col * cell_w, 8 + row * cell_h
                fg, bg = style.colours()
                if ch == "▀":  # upper half fg, lower half bg: the camera's two pixels per cell
                    draw.rectangle([x, y, x + cell_w - 1, y + cell_h // 2 - 1], fill=fg)
                    draw.rectangle([x, y + cell_h // 2, x + cell_w - 1, y + cell_h - 1], fill=bg)
                else:
                    if bg != DEFAULT_BG:
                        draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], fill=bg)
                    if ch != " ":
                        draw.text((x, y), ch, font=bold if style.bold else font, fill=fg)
                    if style.strike and ch != " ":
                        draw.line([x, y + cell_h // 2, x + cell_w, y + cell_h // 2], fill=fg)
                    if style.underline:
                        draw.line([x, y + cell_h - 2, x + cell_w, y + cell_h - 2], fill=fg)
                col += 1
            if match is None:
                break
            style.apply(match.group(1))
            pos = match.end()
        # No reset here: `tmux capture-pane -e` writes an SGR only where a cell's style differs
        # from the cell before it, line ends included, so a line that starts in the style the line
        # above ended in has no escape at all (a camera row that begins in the colour the row
        # above ended in), and its style carries over.
    image.save(out, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-ans", metavar="FILE", help="render this captured screen instead of capturing one")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.from_ans:
        ansi = Path(args.from_ans).read_text(encoding="utf-8")
    else:
        ansi = capture()
        (OUT / "coach_console.ans").write_text(ansi, encoding="utf-8")
        (OUT / "coach_console.txt").write_text(_SGR.sub("", ansi), encoding="utf-8")
    render_png(ansi, OUT / "coach_console.png")
    print(f"wrote {OUT / 'coach_console.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
