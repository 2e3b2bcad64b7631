"""Optional: the LeRobot export loads with lerobot itself (skipped unless lerobot is installed)."""

from __future__ import annotations

import numpy as np
import pytest

lerobot = pytest.importorskip("lerobot")

from sessions.export import ExportOptions, export_sessions  # noqa: E402
from sessions.reader import read_session  # noqa: E402
from sessions.synthetic import write_synthetic_session  # noqa: E402

pytestmark = pytest.mark.lerobot


def _load(root):
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
    except ImportError:  # older layouts
        from lerobot.common.datasets.lerobot_dataset import LeRobotDataset
    return LeRobotDataset(repo_id="hivla/test", root=root, video_backend="pyav")


def test_lerobot_loads_the_export(tmp_path):
    session_dir = write_synthetic_session(tmp_path / "s", episodes=2, steps=12, image_size=32, seed=4)
    out = tmp_path / "ds"
    export_sessions([session_dir], out, ExportOptions(format="lerobot", video_codec="lossless"))
    ds = _load(out)
    session = read_session(session_dir)
    assert ds.num_episodes == 2 and ds.num_frames == len(ds) == 24
    assert ds.meta.has_language_columns if hasattr(ds.meta, "has_language_columns") else True
    for index in (0, 5, 13, 23):
        item = ds[index]
        episode = session.episodes[int(item["episode_index"])]
        position = int(item["frame_index"])
        np.testing.assert_allclose(item["action"].numpy(), episode.steps[position].action, rtol=1e-6)
        front = item["observation.images.front"].numpy()  # float [3, H, W] in [0, 1]
        np.testing.assert_allclose(front.transpose(1, 2, 0) * 255, episode.frame("front", position), atol=1.0)
        assert item["task"] == episode.task
        if "language_persistent" in item:
            styles = {row["style"] for row in item["language_persistent"]}
            assert styles == {"subtask", "plan"}
