"""Training examples for an `hf:` high level from an SFT export (`hivla export --format sft`).

    examples = load_sft_export(["exports/round1"])
    e = examples[0]
    e.frames(), e.context, e.answer        # what HfHighLevel.encode renders into one training sequence

Each row of the export is one decision: the frames the high level saw (the `cameras` column names
the current ones, the last entries of `images`), the context it had (the `context` column: task,
subtasks done, subtask in force, corrections so far) and the plan it should have made (the
assistant turn). The context is re-rendered through prompts/hf_planner.toml by the planner itself,
never taken from the export's own user text, so training and inference see the same prompt.
Rows of weight 0 (plans a correction replaced, or made while the coach suspected a mistake) teach
what not to do and are left out; the others are weighted by their `weight` column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.training.corrections import CorrectionDataError
from policies.planning import PlannerContext, PlanParseError, format_plan, parse_plan

MAKE_SFT = "make one with `hivla export SESSION... --format sft --out DIR`"
COLUMNS = ["images", "cameras", "context", "messages", "subtask", "weight", "split", "session_id", "episode", "step",
           "kind"]


@dataclass(frozen=True)
class SftExample:
    images: dict[str, bytes]  # camera -> PNG of the frame at the decision
    context: PlannerContext
    answer: str  # "thought So: subtask", the form the hf planner answers in
    subtask: str
    weight: float
    split: str  # "train" | "validation"
    key: str  # session_id/episode/step/kind, for messages

    def frames(self) -> dict[str, np.ndarray]:
        from sessions.export.png import decode_png

        return {camera: decode_png(png) for camera, png in self.images.items()}


def answer_of(row: dict) -> str:
    """The assistant turn as the planner's answer; a target without a thought still gets its 'So:'."""
    text = row["messages"][-1]["content"][0]["text"] or ""
    try:
        thought = parse_plan(text).thought
    except PlanParseError:
        thought = ""
    return format_plan(thought, row["subtask"])


def _export_files(path: Path) -> list[Path]:
    if not path.is_dir():
        raise CorrectionDataError(f"--data {path}: no such directory; {MAKE_SFT}")
    manifest = path / "manifest.json"
    if not manifest.is_file():
        raise CorrectionDataError(f"--data {path} is not an export (no manifest.json); hf: models fine-tune on an "
                                  f"SFT export: {MAKE_SFT}")
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CorrectionDataError(f"--data {path}: manifest.json is unreadable ({err}); export again: {MAKE_SFT}") from err
    if meta.get("format") != "sft":
        raise CorrectionDataError(f"--data {path} is a {meta.get('format')!r} export; hf: models fine-tune on an "
                                  f"SFT export: {MAKE_SFT}")
    return [path / name for name in meta.get("files", {}).values()]


def load_sft_export(paths: list[str | Path]) -> list[SftExample]:
    """Every usable row (weight > 0, a subtask) of the SFT exports at `paths`."""
    import pyarrow.parquet as pq

    examples: list[SftExample] = []
    for path in map(Path, paths):
        for file in _export_files(path):
            names = pq.read_schema(file).names
            if "context" not in names or "cameras" not in names:
                raise CorrectionDataError(f"--data {path} was exported before SFT exports carried the planner's "
                                          f"context; export the sessions again ({MAKE_SFT})")
            for row in pq.read_table(file, columns=COLUMNS).to_pylist():
                if not row["subtask"] or not (row["weight"] or 0) > 0:
                    continue
                cameras = row["cameras"] or []
                current = row["images"][len(row["images"]) - len(cameras):] if cameras else []
                examples.append(SftExample(
                    images={cam: image["bytes"] for cam, image in zip(cameras, current)},
                    context=PlannerContext.from_dict(row["context"]), answer=answer_of(row), subtask=row["subtask"],
                    weight=float(row["weight"]), split=row["split"] or "train",
                    key=f"{row['session_id']}/{row['episode']}/{row['step']}/{row['kind']}"))
    if not examples:
        raise CorrectionDataError(f"--data {' '.join(map(str, paths))}: no row with a subtask and a weight above 0 "
                                  f"(every plan there was corrected); export more sessions: {MAKE_SFT}")
    return examples
