"""CLI mistakes are one line and exit 2, checked before any work (issue 13, case 5): broken
checkpoints, bad specs and flags, empty training data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(180)

SHIPPED = REPO / "policies" / "checkpoints" / "small"


def _broken_checkpoint(tmp_path: Path, how: str) -> Path:
    d = tmp_path / how
    shutil.copytree(SHIPPED, d)
    if how == "depth_four":
        config = json.loads((d / "config.json").read_text())
        config["depth"] = "four"
        (d / "config.json").write_text(json.dumps(config))
    elif how == "truncated_weights":
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "no_tokenizer":
        (d / "tokenizer.json").unlink()
    elif how == "invalid_json":
        (d / "config.json").write_text("{not json")
    elif how == "short_norm_stats":
        stats = json.loads((d / "norm_stats.json").read_text())
        stats["state"] = {k: v[:3] for k, v in stats["state"].items()}
        (d / "norm_stats.json").write_text(json.dumps(stats))
    return d


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from agent.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code: int, out: str, err: str, message: str) -> None:
    assert code == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert "hivla run" not in out  # checked before the work: no episode ran, no table


RUN = ["run", "--suite", "base", "--family", "push_to_side", "--episodes", "1", "--quiet", "--image-size", "32"]


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="needs the shipped checkpoint")
@pytest.mark.parametrize("how, message", [
    ("depth_four", "config field 'depth' must be an integer, got 'four'"),
    ("truncated_weights", "(truncated file); point the spec at a complete checkpoint"),
    ("no_tokenizer", "checkpoint is missing ['tokenizer.json']"),
    ("invalid_json", "config.json: not valid JSON"),
    ("short_norm_stats", "norm stats: state has 3 dims, the model expects 8"),
])
def test_a_broken_checkpoint_is_one_line(tmp_path, capsys, how, message):
    ckpt = _broken_checkpoint(tmp_path, how)
    _assert_one_line_error(*_cli([*RUN, "--high-level", f"pi05:{ckpt}", "--low-level", "expert"], capsys), message)


@pytest.mark.parametrize("extra, message", [
    (["--high-level", "foo"], "unknown high-level spec 'foo'"),
    (["--high-level", "pi05:"], "'pi05:' names no checkpoint directory; write pi05:PATH"),
    (["--low-level", "pi05:  "], "names no checkpoint directory"),
    (["--max-steps", "0"], "--max-steps must be at least 1, got 0"),
    (["--episodes", "0"], "--episodes must be at least 1"),
    (["--coach-error-rate", "2"], "--coach-error-rate must be between 0 and 1"),
])
def test_run_mistakes_are_one_line_before_any_episode(capsys, extra, message):
    argv = [*RUN, "--high-level", "oracle", "--low-level", "expert", *extra]
    _assert_one_line_error(*_cli(argv, capsys), message)


def test_json_pointing_at_a_directory_is_refused_before_the_run(tmp_path, capsys):
    argv = [*RUN, "--high-level", "oracle", "--low-level", "expert", "--json", str(tmp_path)]
    _assert_one_line_error(*_cli(argv, capsys), f"--json {tmp_path} is a directory; give a file path")


def test_debug_shows_the_traceback(capsys):
    code, _, err = _cli(["--debug", *RUN, "--high-level", "foo"], capsys)
    assert code == 2 and "Traceback" in err and "SpecError" in err
    code, _, err = _cli([*RUN, "--high-level", "foo", "--debug"], capsys)
    assert code == 2 and "Traceback" in err


def test_train_on_empty_data_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = _cli(["train", "--data", str(empty), "--out", str(tmp_path / "ckpt"), "--preset", "tiny"], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"--data {empty} holds no recorded session; record some with `hivla datagen" in err
    assert not (tmp_path / "ckpt").exists()  # refused before anything was written


@pytest.mark.parametrize("flag, message", [
    ("wher=4", "--question-weight: unknown question type wher; one of where, bowl"),
    ("where", "--question-weight: 'where' is not TYPE=W (e.g. where=4)"),
    ("where=lots", "--question-weight: 'where=lots' is not TYPE=W (e.g. where=4)"),
])
def test_a_bad_question_weight_is_one_line(tmp_path, capsys, flag, message):
    code, _, err = _cli(["train", "--data", str(tmp_path), "--out", str(tmp_path / "ckpt"), "--question-weight", flag],
                        capsys)
    assert code == 2 and "Traceback" not in err and message in err


def test_question_weights_reach_the_planner_recipe():
    from agent.cli import build_parser
    from agent.commands.train import recipe

    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--question-weight", "where=4",
                                      "--question-weight", "count=0.5"])
    assert recipe(args)[1].question_weights == {"where": 4.0, "count": 0.5}


@pytest.mark.parametrize("model, preset, schedule", [
    # steps, batch_size, lr, dtype, eval_every, save_every_s, threads: each recipe's own, as `hivla train --help` says
    ("pi05", "small", (4000, 32, 5e-4, "bf16", 500, 240.0, 2)),
    ("readout", "grounded", (12_000, 64, 1e-3, "bf16", 1000, 240.0, 2)),
    ("vla", "small", (30_000, 64, 1e-3, "fp32", 1000, 180.0, 1)),
])
def test_train_flags_left_unset_take_the_recipes_defaults(model, preset, schedule):
    from agent.cli import build_parser
    from agent.commands.train import recipe

    def settings(*flags):
        return recipe(build_parser().parse_args(["train", "--model", model, "--data", "d", "--out", "o", *flags]))[1]

    names = ("steps", "batch_size", "lr", "dtype", "eval_every", "save_every_s", "threads")
    s = settings()
    assert s.preset == preset and tuple(getattr(s, n) for n in names) == schedule
    s = settings("--steps", "7", "--batch-size", "3", "--lr", "0.5", "--dtype", "fp32", "--eval-every", "2",
                 "--save-every", "9", "--threads", "4", "--set", "depth=2")
    assert tuple(getattr(s, n) for n in names) == (7, 3, 0.5, "fp32", 2, 9.0, 4) and s.overrides == {"depth": 2}
    with pytest.raises(SystemExit, match=f"--preset 'nope' is not a {model} preset; choose from"):
        settings("--preset", "nope")


def test_checkpoint_config_types_are_checked():
    from policies.pi05.configuration import Pi05Config, tiny

    good = tiny().to_dict()
    for field, bad in [("depth", "four"), ("depth", 2.5), ("knowledge_insulation", 1), ("cameras", [1, 2]),
                       ("width", -4), ("depth", 0), ("context_last", 3)]:
        with pytest.raises(ValueError, match=f"config field '{field}' must"):
            Pi05Config.from_dict({**good, field: bad})
    assert Pi05Config.from_dict(good) == tiny()
