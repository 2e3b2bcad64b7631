"""hivla export: round trips of the LeRobot v3.0, chat SFT and pairs formats; options; safety."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from agent.cli import main as hivla
from sessions.export import ExportError, ExportOptions, export_sessions
from sessions.export.png import decode_png
from sessions.reader import read_session
from sessions.video import read_video
from sessions.synthetic import write_synthetic_session

STATS = {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    root = tmp_path_factory.mktemp("sessions")
    a = write_synthetic_session(root / "a", episodes=3, steps=24, image_size=32, seed=11)
    b = write_synthetic_session(root / "b", episodes=2, steps=16, image_size=32, seed=12, speaker="human")
    return root, [a, b]


@pytest.fixture(scope="module")
def lerobot_export(sessions, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "lerobot"
    report = export_sessions([sessions[0]], out, ExportOptions(format="lerobot", video_codec="lossless", val_fraction=0.4, seed=3))
    return out, report


def _interjections_in_order(session_dirs):
    texts = []
    for path in session_dirs:
        for ep in read_session(path).episodes:
            texts.append([c.text for c in ep.corrections if not c.withdrawn])
    return texts


def test_lerobot_layout_and_metadata(lerobot_export):
    out, report = lerobot_export
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10
    assert info["total_episodes"] == 5 == report.episodes and info["total_frames"] == 3 * 24 + 2 * 16
    features = info["features"]
    for key in ("observation.images.front", "observation.images.wrist"):
        assert features[key]["dtype"] == "video" and features[key]["shape"] == [32, 32, 3]
        assert features[key]["names"] == ["height", "width", "channels"]
        assert (out / f"videos/{key}/chunk-000/file-000.mp4").is_file()
    assert features["observation.state"] == {"dtype": "float32", "shape": [8], "names": ["x", "y", "z", "yaw", "grip", "vx", "vy", "vz"]}
    assert features["action"]["shape"] == [5]
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert features[key]["shape"] == [1]
    assert features["language_persistent"]["dtype"] == features["language_events"]["dtype"] == "language"
    # splits are contiguous ranges covering every episode
    ranges = [tuple(map(int, r.split(":"))) for r in info["splits"].values()]
    assert sorted(ranges)[0][0] == 0 and sorted(ranges)[-1][1] == 5
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert set(stats["action"]) == STATS and len(stats["action"]["mean"]) == 5
    assert np.array(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)
    assert stats["index"]["count"] == [info["total_frames"]]
    # tasks.parquet reads back as LeRobot reads it: a frame indexed by task
    pd = pytest.importorskip("pandas")
    tasks = pd.read_parquet(out / "meta" / "tasks.parquet")
    assert tasks.index.name == "task" and list(tasks["task_index"]) == list(range(len(tasks)))
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in episodes] == list(range(5))
    assert episodes[1]["dataset_from_index"] == episodes[0]["dataset_to_index"]
    assert episodes[1]["videos/observation.images.front/from_timestamp"] == pytest.approx(episodes[0]["length"] / 10)
    assert {f"stats/action/{s}" for s in STATS} <= set(episodes[0])
    assert np.array(episodes[0]["stats/observation.images.wrist/mean"]).shape == (3, 1, 1)


def test_lerobot_round_trip_of_frames_actions_and_language(sessions, lerobot_export):
    out, _ = lerobot_export
    data = pq.read_table(out / "data/chunk-000/file-000.parquet").to_pylist()
    provenance = pq.read_table(out / "meta/hivla_episodes.parquet").to_pylist()
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    by_path = {str(p): read_session(p) for p in sessions[1]}
    front_video = read_video(out / "videos/observation.images.front/chunk-000/file-000.mp4")
    assert len(front_video) == len(data)
    for meta, prov in zip(episodes, provenance):
        ep = by_path[prov["session"]].episodes[prov["source_episode"]]
        rows = data[meta["dataset_from_index"] : meta["dataset_to_index"]]
        assert [r["frame_index"] for r in rows] == list(range(len(ep.steps)))
        np.testing.assert_allclose([r["action"] for r in rows], [s.action for s in ep.steps], rtol=1e-6)
        np.testing.assert_allclose([r["observation.state"] for r in rows], [s.state for s in ep.steps], rtol=1e-6)
        first = round(meta["videos/observation.images.front/from_timestamp"] * 10)
        np.testing.assert_array_equal(front_video[first : first + len(ep.steps)], ep.frames("front"))  # lossless codec
        # the subtask rows in force replay the plans; frame t's active subtask is the step's subtask
        persistent = rows[0]["language_persistent"]
        assert all(r["language_persistent"] == persistent for r in rows)
        subtasks = [(r["timestamp"], r["content"]) for r in persistent if r["style"] == "subtask"]
        for r, step in zip(rows, ep.steps):
            active = [content for t, content in subtasks if t <= r["timestamp"] + 1e-6][-1]
            assert active == step.subtask
        plans = [r["content"] for r in persistent if r["style"] == "plan"]
        assert all(" So: " in p for p in plans)
        # every correction is an interjection row on its own frame, in order
        events = [(r["frame_index"], e) for r in rows for e in r["language_events"]]
        assert [e["content"] for _, e in events] == [c.text for c in ep.corrections if not c.withdrawn]
        assert all(e["style"] == "interjection" and e["role"] == "user" and e["camera"] is None for _, e in events)
        assert [f for f, _ in events] == [ep.position_of_step(c.step) for c in ep.corrections if not c.withdrawn]
    corrections = pq.read_table(out / "meta/hivla_corrections.parquet").to_pylist()
    assert {c["kind"] for c in corrections} <= {"override", "negation", "nudge", "constraint", "confirm"}


def _lerobot_hf_features(info: dict, datasets):
    """The `datasets.Features` LeRobot derives from info.json (get_hf_features_from_features)."""

    def language_row(with_timestamp: bool) -> dict:
        row = {"role": datasets.Value("string"), "content": datasets.Value("string"), "style": datasets.Value("string")}
        if with_timestamp:
            row["timestamp"] = datasets.Value("float32")
        row["camera"] = datasets.Value("string")
        row["tool_calls"] = datasets.List(datasets.Json())
        return row

    features = {}
    for key, ft in info["features"].items():
        if key in ("language_persistent", "language_events"):
            features[key] = datasets.List(language_row(key == "language_persistent"))
        elif ft["dtype"] == "video":
            continue
        elif ft["shape"] == [1]:
            features[key] = datasets.Value(ft["dtype"])
        else:
            features[key] = datasets.Sequence(length=ft["shape"][0], feature=datasets.Value(ft["dtype"]))
    return datasets.Features(features)


def test_lerobot_data_loads_with_lerobots_features(lerobot_export):
    datasets = pytest.importorskip("datasets")
    if not hasattr(datasets, "Json"):
        pytest.skip("this datasets version has no Json feature")
    out, _ = lerobot_export
    info = json.loads((out / "meta" / "info.json").read_text())
    ds = datasets.Dataset.from_parquet(str(out / "data/chunk-000/file-000.parquet"), features=_lerobot_hf_features(info, datasets))
    assert len(ds) == info["total_frames"]
    row = ds[30]
    assert len(row["action"]) == 5 and {r["style"] for r in row["language_persistent"]} == {"plan", "subtask"}
    episodes = datasets.Dataset.from_parquet(str(out / "meta/episodes/chunk-000/file-000.parquet"))
    assert episodes["length"] == [24, 24, 24, 16, 16] or sorted(episodes["length"]) == [16, 16, 24, 24, 24]


def test_lerobot_video_timestamps_are_exact(lerobot_export):
    """LeRobot seeks frames by time (from_timestamp + timestamp, 1e-4 s tolerance)."""
    import av

    out, report = lerobot_export
    with av.open(str(out / "videos/observation.images.front/chunk-000/file-000.mp4")) as container:
        times = [frame.time for frame in container.decode(video=0)]
    np.testing.assert_allclose(times, np.arange(report.frames) / 10, atol=1e-4)


def test_lerobot_h264_is_close(sessions, tmp_path):
    out = tmp_path / "h264"
    export_sessions([sessions[1][1]], out, ExportOptions(format="lerobot"))
    video = read_video(out / "videos/observation.images.front/chunk-000/file-000.mp4").astype(int)
    frames = np.concatenate([ep.frames("front") for ep in read_session(sessions[1][1]).episodes]).astype(int)
    assert video.shape == frames.shape and np.abs(video - frames).mean() < 8


def test_lerobot_windows_around_corrections(sessions, tmp_path):
    out = tmp_path / "win"
    report = export_sessions([sessions[1][0]], out, ExportOptions(format="lerobot", video_codec="lossless", max_frames_before=2, max_frames_after=1, kinds=["override"]))
    prov = pq.read_table(out / "meta/hivla_episodes.parquet").to_pylist()
    overrides = [(ep.episode, c.step) for ep in read_session(sessions[1][0]).episodes for c in ep.corrections if c.kind.value == "override" and not c.withdrawn]
    assert report.episodes == len(prov) >= 1
    for p in prov:
        assert p["last_step"] - p["first_step"] <= 3 + 3 * len(overrides)
        assert any(e == p["source_episode"] and p["first_step"] <= s <= p["last_step"] for e, s in overrides)


def test_sft_rows(sessions, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "sft"
    report = export_sessions([sessions[0]], out, ExportOptions(format="sft", max_frames_before=2))
    ds = datasets.Dataset.from_parquet(str(out / "train.parquet"))
    assert len(ds) == report.rows["train"] > 0
    features = ds.features
    assert "messages" in features and "images" in features
    table = pq.read_table(out / "train.parquet").to_pylist()
    session_a = read_session(sessions[1][0])
    for row in table:
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert sum(p["type"] == "image" for p in user["content"]) == len(row["images"])
        assert user["content"][-1]["text"].startswith("Task: ")
        assert assistant["content"][0]["text"].endswith(row["subtask"])
        if row["session"] == str(sessions[1][0]) and row["kind"] == "plan" and row["step"] == 0:
            ep = session_a.episodes[row["episode"]]
            np.testing.assert_array_equal(decode_png(row["images"][-2]["bytes"]), ep.frame("front", 0))
            np.testing.assert_array_equal(decode_png(row["images"][-1]["bytes"]), ep.frame("wrist", 0))
    overrides = [r for r in table if r["kind"] == "override"]
    assert overrides and all(r["weight"] == 1.0 for r in overrides)
    for r in overrides:  # the correction itself is in the context, the human's subtask is the target
        assert "[override]" in r["messages"][0]["content"][-1]["text"].splitlines()[-2]
    corrected = [r for r in table if r["corrected"]]
    assert corrected and all(r["weight"] == 0.0 for r in corrected)
    assert {r["kind"] for r in table} >= {"plan", "override"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "sft" and manifest["rows"]["train"] == len(table)


def test_sft_export_loads_in_datasets_as_trl_documents_it(sessions, tmp_path):
    """`load_dataset("parquet", ...)`, as TRL's vision SFT docs do it: `images` decodes as PIL images
    with no cast, `messages` is the conversational format with one image part per image."""
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("PIL")
    out = tmp_path / "sft"
    # session ids are fresh each run, so pick the split seed that puts an episode on each side
    from sessions.export.common import split_of

    episodes = [(s.header.session_id, ep.episode) for s in (read_session(p) for p in sessions[1]) for ep in s.episodes]
    seed = next(k for k in range(200) if {split_of(sid, e, 0.4, k) for sid, e in episodes} == {"train", "validation"})
    export_sessions([sessions[0]], out, ExportOptions(format="sft", max_frames_before=1, val_fraction=0.4, seed=seed))
    ds = datasets.load_dataset("parquet", data_files={"train": str(out / "train.parquet"),
                                                      "validation": str(out / "validation.parquet")},
                               cache_dir=str(tmp_path / "cache"))
    train = ds["train"]
    assert isinstance(train.features["images"].feature, datasets.Image)
    declared = json.loads(pq.read_schema(out / "train.parquet").metadata[b"huggingface"])["info"]["features"]
    assert train.features == datasets.Features.from_dict(declared), "every column's declared feature is used"
    kinds = set()
    for row in train:
        kinds.add(row["kind"])
        user, assistant = row["messages"]
        assert [user["role"], assistant["role"]] == ["user", "assistant"]
        assert [p["type"] for p in user["content"]] == ["image"] * len(row["images"]) + ["text"]
        assert assistant["content"] == [{"type": "text", "text": assistant["content"][0]["text"]}]
        for image in row["images"]:
            assert image.size == (32, 32) and np.asarray(image.convert("RGB")).shape == (32, 32, 3)
    assert "override" in kinds, "a coached session: its corrections are rows"
    front = np.asarray(train[0]["images"][-2].convert("RGB"))
    np.testing.assert_array_equal(front, decode_png(pq.read_table(out / "train.parquet").to_pylist()[0]["images"][-2]["bytes"]))
    assert len(ds["validation"]) > 0
    # the whole folder as one dataset: the split files, not the fine-tune's coaching table beside them
    whole = datasets.load_dataset("parquet", data_dir=str(out), cache_dir=str(tmp_path / "cache"))
    assert set(whole) == {"train", "validation"} and whole["train"].features == train.features
    assert (out / "coaching.parquet").is_file()


def test_pairs_and_split(sessions, tmp_path):
    out = tmp_path / "pairs"
    report = export_sessions([sessions[0]], out, ExportOptions(format="pairs", val_fraction=0.5, seed=1))
    rows = [r for split in ("train", "validation") if (out / f"{split}.parquet").exists() for r in pq.read_table(out / f"{split}.parquet").to_pylist()]
    expected = sum(len([c for c in ep.corrections if not c.withdrawn]) for p in sessions[1] for ep in read_session(p).episodes)
    assert len(rows) == expected == sum(report.rows.values())
    for r in rows:
        assert r["correction"] and r["kind"] and r["context"].startswith("Task: ")
        if r["kind"] == "override":
            assert r["human_subtask"] and r["model_subtask"] == r["replaced_subtask"]
    # the split is by episode: no episode in both, and it is reproducible
    by_episode = {}
    for r in rows:
        by_episode.setdefault((r["session_id"], r["episode"]), set()).add(r["split"])
    assert all(len(s) == 1 for s in by_episode.values())
    again = tmp_path / "pairs2"
    export_sessions([sessions[0]], again, ExportOptions(format="pairs", val_fraction=0.5, seed=1))
    assert json.loads((again / "manifest.json").read_text())["rows"] == report.rows


def test_filters(sessions, tmp_path):
    r = export_sessions([sessions[0]], tmp_path / "k", ExportOptions(format="pairs", kinds=["negation"]))
    assert set(r.by_kind) == {"negation"}
    r = export_sessions([sessions[0]], tmp_path / "s", ExportOptions(format="pairs", sources=["human"]))
    assert r.sessions == [str(sessions[1][1])]
    r = export_sessions([sessions[0]], tmp_path / "o", ExportOptions(format="sft", only_corrections=True))
    assert "plan" not in r.by_kind
    family = read_session(sessions[1][0]).episodes[0].start.family
    r = export_sessions([sessions[0]], tmp_path / "f", ExportOptions(format="lerobot", families=[family]))
    prov = pq.read_table(tmp_path / "f" / "meta/hivla_episodes.parquet").to_pylist()
    assert {p["family"] for p in prov} == {family}
    with pytest.raises(ExportError, match="nothing to export"):
        export_sessions([sessions[0]], tmp_path / "none", ExportOptions(format="lerobot", families=["no-such-family"]))
    assert not (tmp_path / "none").exists()


def test_output_safety(sessions, tmp_path):
    out = tmp_path / "out"
    export_sessions([sessions[1][1]], out, ExportOptions(format="pairs"))
    with pytest.raises(ExportError, match="--force"):
        export_sessions([sessions[1][1]], out, ExportOptions(format="sft"))
    assert json.loads((out / "manifest.json").read_text())["format"] == "pairs"
    export_sessions([sessions[1][1]], out, ExportOptions(format="sft", force=True))
    assert json.loads((out / "manifest.json").read_text())["format"] == "sft"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp dirs left behind
    with pytest.raises(ExportError, match="holds the sessions"):
        export_sessions([sessions[1][1]], sessions[1][1] / "export", ExportOptions(format="pairs"))


def test_hostile_camera_name_is_refused(sessions, tmp_path):
    bad = shutil.copytree(sessions[1][1], tmp_path / "bad")
    header = json.loads((bad / "session.json").read_text())
    header["cameras"] = {"../../escape": [32, 32]}
    (bad / "session.json").write_text(json.dumps(header))
    with pytest.raises(ExportError, match="refusing camera name"):
        export_sessions([bad], tmp_path / "out", ExportOptions(format="lerobot"))
    assert not (tmp_path / "escape").exists() and not (tmp_path / "out").exists()


def test_cli_skips_bad_sessions_and_fails_only_when_nothing_exported(sessions, tmp_path, capsys):
    bad = tmp_path / "corrupt"
    shutil.copytree(sessions[1][1], bad)
    (bad / "session.json").write_text("{torn")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    code = hivla(["export", str(bad), str(foreign), str(sessions[1][1]), "--format", "pairs", "--out", str(tmp_path / "ok")])
    captured = capsys.readouterr()
    assert code == 0
    assert "skipped" in captured.err and "corrupt header" in captured.err and "not a hivla session" in captured.err
    assert "sessions exported" in captured.out and "override" in captured.out
    code = hivla(["export", str(bad), str(foreign), "--format", "sft", "--out", str(tmp_path / "never")])
    assert code == 2 and "no readable session" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
