"""The files of a LeRobot v3.0 dataset besides its videos' frames: the data parquet, the features
block of meta/info.json, meta/tasks.parquet as LeRobot reads it back, the corrections table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sessions.export.common import ExportOptions, safe_join
from sessions.export.lerobot_language import event_row_type, language_array, persistent_row_type
from sessions.export.lerobot_segments import Schema
from sessions.video import CODEC_NAMES, CODECS

# where the frames' rows and each camera's video go (info.json names both)
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
# True on the frames whose action a person caused (a nudge's burst), False elsewhere: the name LeRobot's
# human-in-the-loop recordings give the flag, a bool of shape [1] as LeRobot declares its `next.done`
INTERVENTION = "complementary_info.is_intervention"


def dataset_features(schema: Schema, video_keys: dict[str, str], root: Path, options: ExportOptions) -> dict:
    features: dict[str, dict] = {}
    for cam, key in video_keys.items():
        h, w = schema.cameras[cam]
        features[key] = {
            "dtype": "video",
            "shape": [h, w, 3],
            "names": ["height", "width", "channels"],
            "info": _video_info(safe_join(root, VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)), options.video_codec),
        }
    features["observation.state"] = {"dtype": "float32", "shape": [len(schema.state_names)], "names": schema.state_names}
    features["action"] = {"dtype": "float32", "shape": [len(schema.action_names)], "names": schema.action_names}
    features[INTERVENTION] = {"dtype": "bool", "shape": [1], "names": None}
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for name in ("frame_index", "episode_index", "index", "task_index"):
        features[name] = {"dtype": "int64", "shape": [1], "names": None}
    features["language_persistent"] = {"dtype": "language", "shape": [1], "names": None}
    features["language_events"] = {"dtype": "language", "shape": [1], "names": None}
    return features


def _video_info(path: Path, codec: str) -> dict:
    """The `info` block LeRobot stores per video feature, probed from the written file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {
            "video.height": stream.height,
            "video.width": stream.width,
            "video.codec": stream.codec_context.codec.canonical_name or CODEC_NAMES[codec],
            "video.pix_fmt": stream.pix_fmt or CODECS[codec][1],
            "video.fps": int(stream.base_rate or stream.average_rate),
            "video.channels": 3,
            "is_depth_map": False,
            "has_audio": False,
        }
    return info


def write_data(root: Path, columns: dict[str, list], schema: Schema) -> None:
    d_state, d_action = len(schema.state_names), len(schema.action_names)
    state = np.concatenate(columns["observation.state"]).astype(np.float32)
    action = np.concatenate(columns["action"]).astype(np.float32)
    arrays = {
        "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), d_state),
        "action": pa.FixedSizeListArray.from_arrays(pa.array(action.reshape(-1)), d_action),
        INTERVENTION: pa.array(np.concatenate(columns[INTERVENTION]), pa.bool_()),
        "timestamp": pa.array(np.concatenate(columns["timestamp"]), pa.float32()),
    }
    for name in ("frame_index", "episode_index", "index", "task_index"):
        arrays[name] = pa.array(np.concatenate(columns[name]), pa.int64())
    arrays["language_persistent"] = language_array(columns["language_persistent"], persistent_row_type())
    arrays["language_events"] = language_array(columns["language_events"], event_row_type())
    table = pa.table(arrays)
    path = safe_join(root, DATA_PATH.format(chunk_index=0, file_index=0))
    write_table(path, table, row_group_rows=None)


def write_tasks(root: Path, tasks: dict[str, int]) -> None:
    """meta/tasks.parquet as pandas writes a frame indexed by `task` (what LeRobot reads back)."""
    names = list(tasks)
    table = pa.table({"task_index": pa.array([tasks[t] for t in names], pa.int64()), "task": pa.array(names, pa.string())})
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    write_table(safe_join(root, "meta", "tasks.parquet"), table)


def corrections_table(rows: list[dict]) -> pa.Table:
    schema = pa.schema([
        ("episode_index", pa.int64()), ("frame_index", pa.int64()), ("index", pa.int64()), ("kind", pa.string()),
        ("text", pa.string()), ("speaker", pa.string()), ("withdrawn", pa.bool_()), ("replaced_subtask", pa.string()),
        ("model_subtask", pa.string()), ("resulting_subtask", pa.string()), ("suspect_from_frame", pa.int64()), ("mistake", pa.string()),
    ])
    return pa.Table.from_pylist(rows, schema=schema)


def write_table(path: Path, table: pa.Table, row_group_rows: int | None = None) -> None:
    mkparent(path)
    pq.write_table(table, path, compression="snappy", row_group_size=row_group_rows)


def mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
