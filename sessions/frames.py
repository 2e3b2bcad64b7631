"""Append-only camera frame files: one file per episode and camera, e.g. frames/ep000003/front.bin.

Each record is a fixed 20-byte header followed by a zlib-compressed raw uint8 [H, W, 3] image:

    magic  b"HVF1"            4 bytes
    frame  uint32             the Step.frame this image belongs to
    height uint16, width uint16
    length uint32             payload bytes
    crc32  uint32             over the packed (frame, height, width, length) and the payload

A crash can leave a torn record at the end of a file (a partial header or payload); a bad disk or
a stray write can damage one in the middle. The reader walks records from the start; at a record
whose magic, length or CRC is wrong it searches forward for the next record that checks out and
carries on from there, so one damaged record costs only itself. The CRC covers the header fields
too, so a damaged length cannot send the reader off into the payload, and a resync candidate is
trusted only when its whole CRC matches.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"HVF1"
_HEADER = struct.Struct("<4sIHHII")
_FIELDS = struct.Struct("<IHHI")
HEADER_SIZE = _HEADER.size
# zlib level 1: ~3x smaller on rendered scenes at a few hundred MB/s; higher levels cost the
# writer thread far more time for a few percent.
COMPRESSION_LEVEL = 1


def frame_path(session_dir: Path, episode: int, camera: str) -> Path:
    return Path(session_dir) / "frames" / f"ep{episode:06d}" / f"{camera}.bin"


def encode_frame(frame: int, image: np.ndarray) -> bytes:
    """One complete record (header + payload) for `image`, uint8 [H, W, 3]."""
    height, width = image.shape[:2]
    payload = zlib.compress(np.ascontiguousarray(image).data, COMPRESSION_LEVEL)
    fields = _FIELDS.pack(frame, height, width, len(payload))
    crc = zlib.crc32(payload, zlib.crc32(fields))
    return _HEADER.pack(MAGIC, frame, height, width, len(payload), crc) + payload


@dataclass(frozen=True)
class FrameEntry:
    frame: int
    offset: int  # of the payload
    length: int
    height: int
    width: int


@dataclass
class FrameIndex:
    """Intact records of one frame file. `torn` says whether the file ended in a bad record;
    `damaged` lists the (start, end) byte ranges skipped in the middle."""

    path: Path
    entries: dict[int, FrameEntry]
    torn: bool
    valid_bytes: int  # where the last intact record ends
    damaged: list[tuple[int, int]] = field(default_factory=list)

    def read(self, frame: int) -> np.ndarray:
        entry = self.entries[frame]
        with open(self.path, "rb") as f:
            f.seek(entry.offset)
            return _decode(f.read(entry.length), entry, self.path)

    def read_many(self, frames: list[int]) -> np.ndarray:
        """uint8 [T, H, W, 3] for the given frame numbers, read in one pass over the file."""
        if not frames:
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
        entries = [self.entries[i] for i in frames]
        first = entries[0]
        if any((e.height, e.width) != (first.height, first.width) for e in entries):
            raise ValueError(f"{self.path}: frames change size within the episode")
        out = np.empty((len(entries), first.height, first.width, 3), dtype=np.uint8)
        with open(self.path, "rb") as f:
            for k, entry in enumerate(entries):
                f.seek(entry.offset)
                out[k] = _decode(f.read(entry.length), entry, self.path)
        return out


def _decode(payload: bytes, entry: FrameEntry, path: Path) -> np.ndarray:
    raw = zlib.decompress(payload)
    expected = entry.height * entry.width * 3
    if len(raw) != expected:
        raise ValueError(f"{path}: frame {entry.frame} holds {len(raw)} bytes, expected {expected}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(entry.height, entry.width, 3)


def _record_at(data: bytes, view: memoryview, pos: int) -> FrameEntry | None:
    """The record starting at `pos` if its header and CRC check out, else None."""
    if len(data) - pos < HEADER_SIZE:
        return None
    magic, frame, height, width, length, crc = _HEADER.unpack_from(data, pos)
    start, end = pos + HEADER_SIZE, pos + HEADER_SIZE + length
    # zlib never grows raw pixels by more than ~0.1% + a few bytes; a longer length is damage
    # (and bounds the CRC work a false magic inside a payload can cost).
    if magic != MAGIC or end > len(data) or length > height * width * 3 + height * width // 100 + 64:
        return None
    fields = _FIELDS.pack(frame, height, width, length)
    if zlib.crc32(view[start:end], zlib.crc32(fields)) != crc:
        return None
    return FrameEntry(frame, start, length, height, width)


def scan_frames(path: Path) -> FrameIndex:
    """Index every intact record of a frame file, skipping damaged ones."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return FrameIndex(path, {}, torn=False, valid_bytes=0)
    entries: dict[int, FrameEntry] = {}
    damaged: list[tuple[int, int]] = []
    pos = valid_end = 0
    view = memoryview(data)
    while pos < len(data):
        entry = _record_at(data, view, pos)
        if entry is None:
            resume = data.find(MAGIC, pos + 1)
            while resume != -1 and _record_at(data, view, resume) is None:
                resume = data.find(MAGIC, resume + 1)
            if resume == -1:
                break  # a torn (or damaged) tail: nothing intact after it
            damaged.append((pos, resume))
            pos = resume
            continue
        # A frame number written twice keeps its first image: later duplicates cannot be
        # told apart from a replay of the same step, and the first is what steps referenced.
        entries.setdefault(entry.frame, entry)
        pos = valid_end = entry.offset + entry.length
    return FrameIndex(path, entries, torn=pos < len(data), valid_bytes=valid_end, damaged=damaged)
