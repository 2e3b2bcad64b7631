"""Draw an RGB image in a terminal with half-block characters.

Each character cell shows two pixels stacked vertically: the glyph "▀" (upper half block) is
painted in the foreground colour (the upper pixel) over the background colour (the lower pixel),
both as 24-bit truecolor. A W x H image therefore needs W columns and H/2 rows.

Images are first box-averaged down to at most `width` columns (never upscaled), keeping the
aspect ratio with square pixels, which is what a terminal cell pair roughly gives.
"""

from __future__ import annotations

import numpy as np

UPPER_HALF_BLOCK = "▀"
RESET = "\x1b[0m"


def downsample(image: np.ndarray, width: int) -> np.ndarray:
    """Box-average `image` (uint8 [H, W, 3]) to at most `width` columns and an even number of rows.

    The output keeps the aspect ratio; its height is rounded to an even count so that every
    terminal row gets two pixels. An odd-height image that is not downscaled gets a black row.
    """
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    height_px, width_px, _ = image.shape
    out_w = min(width, width_px)
    out_h = max(1, min(height_px, round(height_px * out_w / width_px)))
    if (out_w, out_h) != (width_px, height_px):
        image = _box_average(image, out_h, out_w)
    if image.shape[0] % 2:
        image = np.concatenate([image, np.zeros_like(image[:1])], axis=0)
    return image


def _box_average(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    # reduceat sums each [edge_i, edge_{i+1}) block; edges are strictly increasing since out <= in.
    row_edges = np.linspace(0, image.shape[0], out_h + 1).astype(np.int64)
    col_edges = np.linspace(0, image.shape[1], out_w + 1).astype(np.int64)
    summed = np.add.reduceat(image.astype(np.uint32), row_edges[:-1], axis=0)
    summed = np.add.reduceat(summed, col_edges[:-1], axis=1)
    counts = np.diff(row_edges)[:, None, None] * np.diff(col_edges)[None, :, None]
    return ((summed + counts // 2) // counts).astype(np.uint8)


def halfblock_cells(image: np.ndarray, width: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """The (upper, lower) pixel colours of every cell: two uint8 [rows, cols, 3] arrays."""
    pixels = downsample(image, width)
    return pixels[0::2], pixels[1::2]


def halfblock_ansi(image: np.ndarray, width: int = 48) -> str:
    """The image as ANSI text: one line per cell row, each line ending with a colour reset."""
    upper, lower = halfblock_cells(image, width)
    lines = []
    for top_row, bottom_row in zip(upper.tolist(), lower.tolist()):
        cells = [
            f"\x1b[38;2;{r};{g};{b};48;2;{R};{G};{B}m{UPPER_HALF_BLOCK}"
            for (r, g, b), (R, G, B) in zip(top_row, bottom_row)
        ]
        lines.append("".join(cells) + RESET)
    return "\n".join(lines)


def halfblock_fragments(image: np.ndarray, width: int = 48) -> list[tuple[str, str]]:
    """The image as prompt-toolkit formatted-text fragments (style, text), rows separated by "\\n"."""
    upper, lower = halfblock_cells(image, width)
    fragments: list[tuple[str, str]] = []
    for top_row, bottom_row in zip(upper.tolist(), lower.tolist()):
        for (r, g, b), (R, G, B) in zip(top_row, bottom_row):
            fragments.append((f"fg:#{r:02x}{g:02x}{b:02x} bg:#{R:02x}{G:02x}{B:02x}", UPPER_HALF_BLOCK))
        fragments.append(("", "\n"))
    return fragments[:-1]


class HalfBlockImage:
    """A rich renderable drawing an image with half blocks (for rich tables and panels)."""

    def __init__(self, image: np.ndarray, width: int = 48) -> None:
        self.upper, self.lower = halfblock_cells(image, width)

    @property
    def size(self) -> tuple[int, int]:
        """(columns, rows) the image occupies."""
        return self.upper.shape[1], self.upper.shape[0]

    def __rich_console__(self, console, options):
        from rich.color import Color
        from rich.segment import Segment
        from rich.style import Style

        for top_row, bottom_row in zip(self.upper.tolist(), self.lower.tolist()):
            for top, bottom in zip(top_row, bottom_row):
                style = Style(color=Color.from_rgb(*top), bgcolor=Color.from_rgb(*bottom))
                yield Segment(UPPER_HALF_BLOCK, style)
            yield Segment.line()

    def __rich_measure__(self, console, options):
        from rich.measure import Measurement

        return Measurement(self.size[0], self.size[0])
