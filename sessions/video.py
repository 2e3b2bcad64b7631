"""mp4 writing and reading with PyAV, shared by replay videos and dataset exports.

Codec presets:
  h264      libx264, yuv420p -- small, decodable everywhere (the default)
  av1       libsvtav1, yuv420p -- what LeRobot writes by default; smaller, slower to encode
  lossless  libx264rgb at crf 0 on rgb24 -- bit-exact round trips (tests, archival), larger files
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

CODECS = {
    "h264": ("libx264", "yuv420p", {"crf": "18", "preset": "veryfast"}),
    "av1": ("libsvtav1", "yuv420p", {"crf": "30", "preset": "8"}),
    "lossless": ("libx264rgb", "rgb24", {"crf": "0", "preset": "veryfast"}),
}
# The codec name as LeRobot's info.json reports it (from the stream, like ffprobe).
CODEC_NAMES = {"h264": "h264", "av1": "av1", "lossless": "h264"}


class VideoWriter:
    """Append uint8 [H, W, 3] frames to an mp4. `gop` = keyframe interval (small = fast seeks)."""

    def __init__(self, path: str | Path, fps: float, codec: str = "h264", gop: int | None = None) -> None:
        import av

        if codec not in CODECS:
            raise ValueError(f"unknown video codec {codec!r}; choose one of {sorted(CODECS)}")
        if codec == "av1":
            import os

            os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner to stderr otherwise
        self.path = Path(path)
        self.codec = codec
        self.fps = fps
        self.frames = 0
        self._gop = gop
        self._container = av.open(str(self.path), mode="w", format="mp4")
        self._stream = None
        self._rate = Fraction(fps).limit_denominator(1000)

    def _open_stream(self, height: int, width: int) -> None:
        name, pix_fmt, options = CODECS[self.codec]
        if pix_fmt == "yuv420p" and (height % 2 or width % 2):
            raise ValueError(f"{self.codec} video needs even frame sizes, got {height}x{width}; use codec 'lossless'")
        options = dict(options)
        if self._gop is not None:
            options["g"] = str(self._gop)
        stream = self._container.add_stream(name, rate=self._rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = 1 / self._rate
        self._stream = stream
        self._shape = (height, width)

    def write(self, frame: np.ndarray) -> None:
        import av

        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"video frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
        if self._stream is None:
            self._open_stream(*frame.shape[:2])
        elif frame.shape[:2] != self._shape:
            raise ValueError(f"frame size changed from {self._shape} to {frame.shape[:2]} within one video")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self.frames
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()
        self._container = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_video(path: str | Path) -> np.ndarray:
    """uint8 [T, H, W, 3] of every frame in the file's first video stream."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return np.stack(frames)
