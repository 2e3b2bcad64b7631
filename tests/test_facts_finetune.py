"""`hivla finetune --readout-facts` (issue 33): a grounded planner's object read-out learns what people
said was true. A fact said in a recorded run (the facts coach, answering a tiny random grounded planner
that misreads everything) survives the recorder, the SFT / LeRobot exports and the sessions' own
reader into read-out rows; the fine-tune writes a grounded checkpoint `hivla run` loads; its reading of
the stated object moves toward the stated place; heads-only leaves the object tokens (and so every
decision given a line) as they were; its control arm (`--fact-share 0`) trains on planner frames alone
and still reads the same facts before and after; wrong inputs are refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from agent.cli import main
from agent.envs import make_env
from agent.training import planner_frames as pf
from agent.training.facts_finetune import (
    HEADS, FactsFinetuneSettings, finetune_readout_on_facts, labels_from_fact, load_fact_rows, readout_loss,
)
from policies.pi05.configuration import make_config
from policies.pi05.modeling import Pi05Model
from policies.pi05.objects import BLOCK_NAMES, BOWL_NAMES, IGNORE, WHERE_NAMES, ObjectReadout
from policies.pi05.policy import load_checkpoint, save_checkpoint
from policies.scene_line import NAMED, PLACES, SIDES, Fact
from policies.types import CorrectionKind
from sessions.reader import read_session
from test_fact_replan import tiny_grounded_planner

torch.set_num_threads(1)
FAMILY = "put_color_in_bowl"


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Two tiny planner-frame shards (oracle + expert episodes), the base data mixed in."""
    out = tmp_path_factory.mktemp("frames")
    pf.write_manifest(out, 32, 8)
    pf.record_shard(str(out), [0], "base", 0.0, 32, 150, [FAMILY])
    pf.record_shard(str(out), [1], "base", 0.0, 32, 150, ["stack_three"])
    return out


@pytest.fixture(scope="module")
def grounded(tmp_path_factory):
    """A tiny grounded checkpoint with random weights: its line names blocks the scene does not hold."""
    obs, _ = make_env(family=FAMILY, image_size=32).reset(seed=0)
    policy = tiny_grounded_planner(len(obs["state"]), seed=0)
    return save_checkpoint(tmp_path_factory.mktemp("grounded") / "ckpt", policy.model, policy.processor.tok,
                           policy.processor.stats, extra={"preset": "tiny"})


@pytest.fixture(scope="module")
def coached(grounded, tmp_path_factory):
    """`hivla run --coach facts` recorded, and its SFT export."""
    root = tmp_path_factory.mktemp("coached")
    code = main(["run", "--high-level", f"pi05:{grounded}", "--low-level", "expert", "--family", FAMILY,
                 "--episodes", "2", "--image-size", "32", "--coach", "facts", "--max-steps", "40",
                 "--out", str(root / "sessions"), "--quiet"])
    assert code == 0
    assert main(["export", str(root / "sessions"), "--format", "sft", "--out", str(root / "sft")]) == 0
    [session] = list((root / "sessions").iterdir())
    said = [c for ep in read_session(session).episodes for c in ep.active_corrections]
    assert said and all(c.kind is CorrectionKind.FACT for c in said)
    return {"root": root, "sessions": root / "sessions", "sft": root / "sft", "said": said}


def finetune(grounded, data, frames, out, *extra: str) -> int:
    return main(["finetune", "--base", str(grounded), "--data", str(data), "--base-data", str(frames),
                 "--out", str(out), "--readout-facts", "--threads", "1", "--dtype", "fp32", *extra])


def tensors(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_a_fact_survives_the_recorder_the_export_and_the_finetune(grounded, coached, frames, tmp_path, capsys):
    out = tmp_path / "facts_ckpt"
    assert finetune(grounded, coached["sft"], frames, out, "--steps", "3", "--batch-size", "8") == 0
    info = json.loads((out / "checkpoint_info.json").read_text())["readout_facts"]
    # every fact said in the run is a training row (a few episodes: the held-out split may take some)
    assert info["facts"]["total"] == len(coached["said"]) and info["facts"]["train"] >= 1
    assert info["scope"] == "heads" and info["decisions_given_a_line_unchanged"] and info["step"] == 3
    assert set(info["facts"]["by_kind"]) <= {*PLACES, "drawer_state", "bowls"}
    assert sum(info["facts"]["by_kind"].values()) == len(coached["said"])
    assert info["before"]["facts_train"]["n"] == info["facts"]["train"] and info["after"]["base_reading"]["frames"] > 0
    assert "facts read as stated" in capsys.readouterr().out
    assert (out / "finetune.log").read_text().count("step 3 ") == 1  # the loop's log line
    # heads only: every tensor but the read-out's heads is the base checkpoint's, bit for bit
    base, tuned = tensors(grounded), tensors(out)
    assert base.keys() == tuned.keys()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.split(".")[1] in HEADS for k in changed), changed
    # OUT is a grounded checkpoint `hivla run` loads by its spec, and it plans
    from agent.specs import make_high_level

    obs, _ = make_env(family=FAMILY, image_size=32).reset(seed=0)
    high = make_high_level(f"pi05:{out}")
    from policies.types import Observation, PlanContext

    plan = high.plan(Observation(images=obs["images"], state=obs["state"], task=obs["task"], time=0.0),
                     PlanContext(task=obs["task"]))
    assert (plan.thought or plan.subtask).startswith("I see:")


def test_the_exports_and_the_sessions_give_the_same_fact_rows(grounded, coached, tmp_path):
    cfg = load_checkpoint(grounded)[0].cfg
    lerobot = tmp_path / "lerobot"
    assert main(["export", str(coached["sessions"]), "--format", "lerobot", "--video-codec", "lossless",
                 "--out", str(lerobot)]) == 0
    rows = {name: load_fact_rows([path], cfg.cameras, cfg.image_size, log=lambda *_: None)
            for name, path in (("sft", coached["sft"]), ("sessions", coached["sessions"]), ("lerobot", lerobot))}
    said = [Fact.from_dict(c.fact.model_dump()) for c in coached["said"]]
    for name, r in rows.items():
        assert sorted(map(str, r.facts)) == sorted(map(str, said)), name
        for k in ("place", "where", "side", "drawer"):
            assert torch.equal(r.labels[k], rows["sft"].labels[k]), (name, k)
    # the frames are the ones the fact refers to, the contradicted plan's (the coach spoke its reaction
    # time later): exact through PNG, and through a lossless video
    assert torch.equal(rows["sft"].images, rows["sessions"].images)
    assert (rows["lerobot"].images.int() - rows["sft"].images.int()).abs().float().mean() < 2.0
    for name, r in rows.items():
        assert r.lags == rows["sessions"].lags and all(lag > 0 for lag in r.lags), (name, r.lags)
    from policies.pi05.processor import stack_cameras
    from sessions.export.common import fact_frame_step

    at = {}
    for ep in read_session(next(coached["sessions"].iterdir())).episodes:
        for c in ep.active_corrections:
            plan = next(p for p in ep.plans if p.plan_id == ep.steps[ep.position_of_step(c.step - 1)].plan_id)
            assert fact_frame_step(ep, c) == plan.asked_step < c.step and plan.plan == c.replaced_plan
            frames = {cam: ep.frame(cam, ep.position_of_step(plan.asked_step)) for cam in ep.cameras}
            at[(ep.episode, c.step, c.fact.subject)] = torch.from_numpy(stack_cameras(frames, cfg.cameras,
                                                                                      cfg.image_size))
    for key, image in zip(rows["sessions"].keys, rows["sessions"].images):
        _, episode, step, subject = key.split("/")
        assert torch.equal(image, at[(int(episode), int(step), subject)])
    # a source given twice (an export and its sessions) counts each fact once
    for pair in ((coached["sft"], coached["sessions"]), (lerobot, coached["sessions"])):
        both = load_fact_rows(list(pair), cfg.cameras, cfg.image_size, log=lambda *_: None)
        assert len(both) == len(said) and sorted(both.episodes) == sorted(rows["sessions"].episodes)


def stated_place_probability(ckpt, rows) -> torch.Tensor:
    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        out = model.vision.heads(model.vision.features(rows.images))
    p = out["place"].float().softmax(-1)  # [N, blocks, places]
    stated = rows.labels["place"]
    n, b = torch.nonzero(stated != IGNORE, as_tuple=True)
    return p[n, b, stated[n, b]]


def test_the_reading_of_the_stated_object_moves_toward_the_stated_place(grounded, coached, frames, tmp_path):
    cfg = load_checkpoint(grounded)[0].cfg
    rows = load_fact_rows([coached["sft"]], cfg.cameras, cfg.image_size, log=lambda *_: None)
    out = tmp_path / "learned"
    summary = finetune_readout_on_facts(FactsFinetuneSettings(
        base=str(grounded), data=[str(coached["sft"])], base_data=[str(frames)], out=str(out), steps=25,
        batch_size=16, lr=1e-2, warmup_steps=1, fact_share=0.5, held_out_fraction=0.0, dtype="fp32", threads=1,
        progress=False))
    before, after = stated_place_probability(grounded, rows), stated_place_probability(out, rows)
    assert after.mean() > before.mean() + 0.05 and (after > before).float().mean() >= 0.75, (before, after)
    assert summary["after"]["facts_train"]["as_stated"] >= summary["before"]["facts_train"]["as_stated"]
    # the object tokens the backbone reads are the base's: decisions given a line cannot move
    base_model, tuned_model = load_checkpoint(grounded)[0], load_checkpoint(out)[0]
    with torch.no_grad():
        assert torch.equal(base_model.vision(rows.images), tuned_model.vision(rows.images))


def test_the_readout_scope_moves_the_features_and_never_the_backbone(grounded, coached, frames, tmp_path):
    out = tmp_path / "readout_scope"
    assert finetune(grounded, coached["sft"], frames, out, "--steps", "2", "--batch-size", "8",
                    "--readout-scope", "readout") == 0
    base, tuned = tensors(grounded), tensors(out)
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert any(k.startswith("vision.trunk") for k in changed)
    assert all(k.startswith("vision.") and not k.startswith("vision.proj") for k in changed), changed
    info = json.loads((out / "checkpoint_info.json").read_text())["readout_facts"]
    assert info["scope"] == "readout" and not info["decisions_given_a_line_unchanged"]


def test_the_control_arm_trains_on_planner_frames_alone_and_still_reads_the_facts(grounded, coached, frames,
                                                                                     tmp_path, capsys):
    arms = {}
    for name, share in (("facts", "0.5"), ("control", "0")):
        out = tmp_path / name
        assert finetune(grounded, coached["sft"], frames, out, "--steps", "4", "--batch-size", "8", "--lr", "1e-2",
                        "--fact-share", share) == 0
        arms[name] = {"out": out, "printed": capsys.readouterr().out,
                      "info": json.loads((out / "checkpoint_info.json").read_text())["readout_facts"],
                      "summary": json.loads((out / "finetune_summary.json").read_text())}
    control, facts = arms["control"], arms["facts"]
    # the log says it is a control, and its batches held no fact row
    assert "fact rows: 0 (control" in control["printed"] and "(control" not in facts["printed"]
    assert control["info"]["fact_share"] == 0 and control["info"]["control"] and not facts["info"]["control"]
    assert control["summary"]["batch"] == {"fact_rows": 0, "planner_frames": 8}
    assert facts["summary"]["batch"] == {"fact_rows": 4, "planner_frames": 4}
    steps = [line for line in (control["out"] / "finetune.log").read_text().splitlines() if " base_loss " in line]
    assert steps and all("fact_loss" not in line and "facts_as_stated" not in line for line in steps)
    assert all("fact_loss" in line for line in (facts["out"] / "finetune.log").read_text().splitlines()
               if " base_loss " in line)
    # it trained: the read-out's heads moved (and nothing else: heads scope)
    base, tuned = tensors(grounded), tensors(control["out"])
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.split(".")[1] in HEADS for k in changed), changed
    # the same facts chosen, read before and after as in the facts arm: the two JSON compare side by side
    assert control["info"]["facts"] == facts["info"]["facts"] and control["info"]["facts"]["train"] >= 1
    assert control["info"]["before"] == facts["info"]["before"]
    for when in ("before", "after"):
        for split, n in (("facts_train", "train"), ("facts_held_out", "held_out")):
            assert control["info"][when][split]["n"] == control["info"]["facts"][n]
        assert control["info"][when]["facts_train"]["as_stated"] is not None
        assert control["info"][when]["base_reading"]["frames"] > 0
    # a batch without fact rows: no fact term in the loss or the log (not a NaN, not a 0 read as one)
    from agent.training.facts_finetune import FactsObjective

    model = load_checkpoint(grounded)[0]
    rows = load_fact_rows([coached["sft"]], model.cfg.cameras, model.cfg.image_size, log=lambda *_: None)
    with torch.no_grad():
        batch = {"features": model.vision.features(rows.images), **rows.labels,
                 "is_fact": torch.zeros(len(rows), dtype=torch.bool)}
    loss, info = FactsObjective(model.vision, "heads")(batch)
    assert torch.isfinite(loss) and set(info) == {"loss", "base_loss"}
    # facts_round.py reuses an arm's fine-tune only when it was run as asked
    round_ = facts_round()
    asked = ["--finetune-steps", "4", "--lr", "1e-2", "--workdir", str(tmp_path)]
    round_.check_finetuned_as_asked(round_.parse_args([*asked, "--fact-share", "0"]), control["out"])
    with pytest.raises(SystemExit, match="fact_share 0.0 \\(asked 0.25\\)"):
        round_.check_finetuned_as_asked(round_.parse_args(asked), control["out"])


def facts_round():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "facts_round.py"
    spec = importlib.util.spec_from_file_location("facts_round", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_facts_round_names_each_arm_and_refuses_a_share_out_of_range(tmp_path, capsys):
    round_ = facts_round()
    w = ["--workdir", str(tmp_path)]
    assert round_.arm(round_.parse_args(w)) == ""  # the default share: the round's files as they were named
    control = round_.parse_args([*w, "--fact-share", "0"])
    assert round_.arm(control) == "_control" and control.json.name == "facts_round_control.json"
    assert round_.arm(round_.parse_args([*w, "--fact-share", "0.5"])) == "_share0.5"
    # arms that differ only in scope or lr keep their own fine-tune and AFTER files
    other = round_.parse_args([*w, "--fact-share", "0.1", "--scope", "readout", "--lr", "3e-4"])
    assert round_.arm(other) == "_share0.1_readout_lr0.0003" and other.json.name == "facts_round_share0.1_readout_lr0.0003.json"
    assert round_.arm(round_.parse_args([*w, "--lr", "1e-3"])) == ""  # the default lr named explicitly
    spanned = round_.parse_args([*w, "--fact-share", "0.1", "--fact-span", "30", "--fact-unsaid", "base"])
    assert round_.arm(spanned) == "_share0.1_span30_unsaidbase"
    for share in ("-0.1", "1.5"):
        with pytest.raises(SystemExit):
            round_.parse_args([*w, "--fact-share", share])
        assert "--fact-share must be in [0, 1]" in capsys.readouterr().err


def test_facts_the_base_already_reads_as_stated_are_left_out():
    from agent.training.facts_finetune import FactRows, _label_tensors, drop_read_as_stated

    torch.manual_seed(0)
    readout = ObjectReadout(make_config("tiny", vision_stem="objects", scene_bowls=True)).eval()
    images = torch.randint(0, 255, (4, 2, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        read = readout.heads(readout.features(images))["place"].argmax(-1)  # [4, blocks]
    red = BLOCK_NAMES.index("red block")
    # rows 0 and 1 state the place the read-out reads; rows 2 and 3 another
    facts = [Fact("red block", PLACES[int(read[i, red]) if i < 2 else (int(read[i, red]) + 1) % len(PLACES)])
             for i in range(4)]
    facts = [Fact(f.subject, f.place, "blue bowl" if f.place == "bowl" else "green block" if f.place == "block"
                  else None) for f in facts]
    labels = [labels_from_fact(f) for f in facts]
    for row in labels[:2]:  # what the read-out reads, and nothing it might not (its bowl, its block beneath)
        row["where"], row["bowls"] = [IGNORE] * len(row["where"]), [IGNORE] * len(row["bowls"])
    rows = FactRows(images, _label_tensors(labels), facts, ["s/0", "s/0", "s/1", "s/1"],
                    [f"s/{i}/4/red block" for i in range(4)], ["scripted"] * 4, {}, [6] * 4)
    kept, n_read = drop_read_as_stated(readout, rows, "fp32", torch.device("cpu"))
    assert n_read == 2 and kept.keys == rows.keys[2:] and kept.lags == [6, 6]


def test_a_fact_labels_only_its_object():
    red = BLOCK_NAMES.index("red block")
    labels = labels_from_fact(Fact("red block", "bowl", "blue bowl"))
    assert labels["place"][red] == PLACES.index("bowl") and labels["where"][red] == WHERE_NAMES.index("blue bowl")
    assert sum(p != IGNORE for p in labels["place"]) == 1 and labels["drawer"] == IGNORE
    assert labels["bowls"] == [1 if b == "blue bowl" else IGNORE for b in BOWL_NAMES]  # the bowl is there
    table = labels_from_fact(Fact("red block", "table", side="left"))
    assert table["side"][red] == SIDES.index("left") and table["where"][red] == IGNORE
    assert labels_from_fact(Fact("red block", "table"))["side"][red] == IGNORE  # no side said: none learned
    assert labels_from_fact(Fact("red block", "absent"))["place"][red] == PLACES.index("absent")
    assert labels_from_fact(Fact("drawer", "open"))["drawer"] == 1
    named = labels_from_fact(Fact("green bowl", NAMED, "blue bowl"))
    assert named["bowls"][BOWL_NAMES.index("green bowl")] == 1 and set(named["place"]) == {IGNORE}
    # the loss over partial labels is finite, and zero gradient reaches a head no label concerns
    readout = ObjectReadout(make_config("tiny", vision_stem="objects", scene_bowls=True))
    out = readout.heads(readout.features(torch.randint(0, 255, (2, 2, 32, 32, 3), dtype=torch.uint8)))
    batch = {k: torch.tensor([labels_from_fact(Fact("drawer", "open"))[k]] * 2,
                             dtype=torch.float32 if k == "x" else torch.long) for k in labels}
    loss = readout_loss({k: v.float() for k, v in out.items()}, batch)
    loss.backward()
    assert torch.isfinite(loss) and readout.place_head.weight.grad.abs().sum() == 0
    assert readout.drawer_head.weight.grad.abs().sum() > 0


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def test_wrong_inputs_are_refused_in_one_line(grounded, coached, frames, tmp_path, capsys):
    # a planner without a read-out
    plain = tmp_path / "plain"
    policy = tiny_grounded_planner(8, seed=0)
    save_checkpoint(plain, Pi05Model(make_config("tiny", vocab_size=policy.processor.cfg.vocab_size)),
                    policy.processor.tok, policy.processor.stats)
    assert finetune(plain, coached["sft"], frames, tmp_path / "o1") == 2
    assert "grounded" in one_line_error(capsys) and not (tmp_path / "o1").exists()
    # flags of the other recipes, and --readout-facts's own flags without it
    assert finetune(grounded, coached["sft"], frames, tmp_path / "o2", "--lora") == 2
    assert "--lora" in one_line_error(capsys)
    assert main(["finetune", "--base", "hf:models/x", "--data", str(coached["sft"]), "--out", str(tmp_path / "o3"),
                 "--readout-facts"]) == 2
    assert "grounded" in one_line_error(capsys)
    assert main(["finetune", "--base", str(grounded), "--data", str(coached["sft"]), "--out", str(tmp_path / "o4"),
                 "--fact-share", "0.5"]) == 2
    assert "--readout-facts" in one_line_error(capsys)
    assert main(["finetune", "--base", str(grounded), "--data", str(coached["sft"]), "--out", str(tmp_path / "o4a"),
                 "--fact-span", "30"]) == 2
    assert "--fact-span" in one_line_error(capsys)
    assert finetune(grounded, coached["sft"], frames, tmp_path / "o4c", "--fact-span", "-1") == 2
    assert "--fact-span must be >= 0" in one_line_error(capsys) and not (tmp_path / "o4c").exists()
    # a share out of [0, 1] (0, the control arm, is in)
    for share in ("-0.1", "1.5", "nan"):
        assert finetune(grounded, coached["sft"], frames, tmp_path / "o4b", "--fact-share", share) == 2
        err = one_line_error(capsys)
        assert "--fact-share must be in [0, 1]" in err and "control" in err, err
        assert not (tmp_path / "o4b").exists()
    # base data that is not planner frames
    assert finetune(grounded, coached["sft"], coached["sessions"], tmp_path / "o5") == 2
    assert "datagen --mode planner" in one_line_error(capsys)
    # a truncated checkpoint
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in grounded.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert finetune(broken, coached["sft"], frames, tmp_path / "o6") == 2
    assert "truncated" in one_line_error(capsys)
    # a truncated export
    export = tmp_path / "export"
    export.mkdir()
    for f in coached["sft"].iterdir():
        (export / f.name).write_bytes(f.read_bytes())
    data = (export / "train.parquet").read_bytes()
    (export / "train.parquet").write_bytes(data[: len(data) // 2])
    assert finetune(grounded, export, frames, tmp_path / "o7") == 2
    assert "hivla export" in one_line_error(capsys)
    # no fact in the data
    empty = tmp_path / "no_facts"
    assert main(["run", "--high-level", "oracle", "--low-level", "expert", "--family", FAMILY, "--episodes", "1",
                 "--image-size", "32", "--max-steps", "10", "--out", str(empty), "--quiet"]) == 0
    capsys.readouterr()
    assert finetune(grounded, empty, frames, tmp_path / "o8") == 2
    assert "--coach facts" in one_line_error(capsys)


@pytest.mark.slow
def test_the_facts_round_runs_in_miniature(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "facts_round.py"
    result = tmp_path / "facts_round.json"
    argv = [sys.executable, str(script), "--preset", "tiny", "--workdir", str(tmp_path / "work"), "--json", str(result),
            "--threads", "1", "--workers", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(result.read_text())
    assert data["facts"]["total"] > 0
    for when in ("before", "after"):
        assert 0.0 <= data[when]["reading"]["scene_lines_right"] <= 1.0
        assert data[when]["decisions"]["all"]["frames"] > 0
    # heads only: given the true line, every decision is the same before and after
    assert data["before"]["decisions"]["all (true line given)"] == data["after"]["decisions"]["all (true line given)"]
    # run again: every stage's output is there, nothing runs
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "$ " not in again.stdout, again.stdout
    # the control arm in the same workdir: the round's sessions, export and BEFORE, its own fine-tune and AFTER
    control = tmp_path / "facts_round_control.json"
    done = subprocess.run([*argv[:argv.index("--json")], "--json", str(control), *argv[argv.index("--json") + 2:],
                           "--fact-share", "0"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = [line for line in done.stdout.splitlines() if line.startswith("$ ")]
    assert ran and all(" finetune " in line or "offline_eval" in line for line in ran), ran
    arm = json.loads(control.read_text())
    assert arm["finetune"]["control"] and arm["finetune"]["batch"]["fact_rows"] == 0 and not data["finetune"]["control"]
    assert arm["finetune"]["checkpoint"].endswith("facts_ckpt_control")
    assert arm["facts"] == data["facts"] and arm["before"] == data["before"]
    assert arm["facts_read_as_stated"]["train_before"] == data["facts_read_as_stated"]["train_before"]
    assert arm["facts_read_as_stated"]["train_after"] is not None and arm["after"]["reading"]["frames"] > 0
    assert "CONTROL ARM" in " ".join(done.stdout.split()) and "control arm (no fact trained on)" in done.stdout


class _Episode:
    """What fact_span_steps reads of a recorded episode: its kept steps (number, subtask in force)."""

    def __init__(self, subtasks: list[str | None]):
        from types import SimpleNamespace

        self.steps = [SimpleNamespace(step=i, subtask=s) for i, s in enumerate(subtasks)]

    def position_of_step(self, step: int) -> int:
        return max(0, min(step, len(self.steps) - 1))


def _said(fact: Fact, step: int = 12):
    from sessions.schema import CorrectionRecord, FactData

    return CorrectionRecord(episode=0, step=step, correction_id=0, kind=CorrectionKind.FACT, text="", wall_time=0.0,
                            fact=FactData(subject=fact.subject, place=fact.place, where=fact.where, side=fact.side))


def test_a_fact_is_learned_on_the_frames_around_its_own_while_it_holds():
    from sessions.export.common import fact_span_steps

    # steps 0-4 pick the red block, 5-9 put it in the drawer, 10-29 pick the green block
    ep = _Episode(["pick up the red block"] * 5 + ["put it in the drawer"] * 5 + ["pick up the green block"] * 20)
    # "the red block is in the drawer", read at step 12: a block's place holds from its frame on, never
    # before it (the robot may have put it there, or knocked it there)
    assert fact_span_steps(ep, _said(Fact("red block", "drawer")), 12, window=30) == list(range(12, 30))
    assert fact_span_steps(ep, _said(Fact("red block", "table")), 12, window=30) == list(range(12, 30))
    # within the window, every stride-th step
    assert fact_span_steps(ep, _said(Fact("red block", "drawer")), 12, window=6, stride=3) == [12, 15, 18]
    # a fact about the block the subtask in force moves holds on its own frame alone; so does a held block's
    assert fact_span_steps(ep, _said(Fact("green block", "table")), 12, window=30) == [12]
    assert fact_span_steps(ep, _said(Fact("blue block", "held")), 12, window=30) == [12]
    # a block that is not there never was, back to the put-down of a held block (which one is not named)
    span = fact_span_steps(ep, _said(Fact("blue block", "absent")), 12, window=30)
    assert span[0] == 12 and sorted(span) == list(range(10, 30))
    assert sorted(fact_span_steps(ep, _said(Fact("red block", "table")), 3, window=0)) == [3]
    # the drawer: until a drawer subtask opens or closes it
    drawer = _Episode(["open the drawer"] * 4 + ["pick up the red block"] * 8 + ["close the drawer"] * 4)
    assert sorted(fact_span_steps(drawer, _said(Fact("drawer", "open")), 6, window=30)) == list(range(4, 12))


def test_the_base_reading_labels_what_a_fact_leaves_unsaid():
    from agent.training.facts_finetune import _label_tensors, with_base_reading

    torch.manual_seed(0)
    readout = ObjectReadout(make_config("tiny", vision_stem="objects", scene_bowls=True)).eval()
    images = torch.randint(0, 255, (3, 2, 32, 32, 3), dtype=torch.uint8)
    facts = [Fact("red block", "bowl", "blue bowl"), Fact("green block", "table"), Fact("drawer", "open")]
    labels = _label_tensors([labels_from_fact(f) for f in facts])
    filled = with_base_reading(readout, images, labels, "fp32", torch.device("cpu"))
    with torch.no_grad():
        out = readout.heads(readout.features(images))
    said = labels["place"] != IGNORE
    # what the fact says is kept as said; every other block takes the place the read-out reads
    assert torch.equal(filled["place"][said], labels["place"][said])
    assert torch.equal(filled["place"][~said], out["place"].argmax(-1)[~said])
    assert (filled["place"] != IGNORE).all() and (filled["drawer"] != IGNORE).all()
    assert filled["drawer"][2] == 1 and filled["where"][0, BLOCK_NAMES.index("red block")] == WHERE_NAMES.index(
        "blue bowl")
    assert filled["side"][1, BLOCK_NAMES.index("green block")] == IGNORE  # a side not said stays unknown
    # where and side only where the read place has them, as the simulator's labels
    place = filled["place"][~said]
    assert ((filled["where"][~said] != IGNORE) == ((place == PLACES.index("bowl")) | (place == PLACES.index("block")))).all()
    assert ((filled["side"][~said] != IGNORE) == (place == PLACES.index("table"))).all()
    assert torch.equal(filled["bowls"][0, BOWL_NAMES.index("blue bowl")], torch.tensor(1))  # the fact's bowl


def test_a_fact_span_comes_from_the_sessions_and_an_export_says_it_keeps_one_frame(grounded, coached, frames, tmp_path):
    from sessions.export.common import fact_frame_step, fact_span_steps

    cfg = load_checkpoint(grounded)[0].cfg
    said = []
    rows = load_fact_rows([coached["sessions"]], cfg.cameras, cfg.image_size, log=said.append, span=8, span_stride=2)
    expected = 0
    for ep in read_session(next(coached["sessions"].iterdir())).episodes:
        for c in ep.active_corrections:
            expected += len(fact_span_steps(ep, c, fact_frame_step(ep, c), 8, 2)) - 1
    assert expected > 0 and len(rows.span_of) == expected and len(rows.span_images) == expected
    images, labels = rows.training_rows()
    assert len(images) == len(rows) + expected
    assert torch.equal(labels["place"][len(rows):], rows.labels["place"][torch.tensor(rows.span_of)])
    assert any(f"{expected} more frames they hold on" in line for line in said)
    # a subset keeps the spans of the facts it keeps, pointing at their new rows
    first = rows.subset([len(rows) - 1])
    assert len(first.span_of) == rows.span_of.count(len(rows) - 1) and set(first.span_of) <= {0}
    # an export keeps each fact's own frame: learned there alone, and the log says how to do otherwise
    said.clear()
    one = load_fact_rows([coached["sft"]], cfg.cameras, cfg.image_size, log=said.append, span=8)
    assert not one.span_of and any("--fact-span" in line for line in said)
    # the fine-tune takes both flags, and records them
    out = tmp_path / "span"
    assert finetune(grounded, coached["sessions"], frames, out, "--steps", "2", "--batch-size", "8",
                    "--fact-span", "8", "--fact-unsaid", "base") == 0
    info = json.loads((out / "checkpoint_info.json").read_text())["readout_facts"]
    assert info["span"] == 8 and info["unsaid"] == "base" and info["facts"]["train_frames"] > info["facts"]["train"]
    # planner frames with every label known join the fact rows (the ceiling arm of a facts round)
    ceiling = tmp_path / "ceiling"
    assert finetune(grounded, coached["sessions"], frames, ceiling, "--steps", "2", "--batch-size", "8",
                    "--labelled-frames", str(frames)) == 0
    info_ceiling = json.loads((ceiling / "checkpoint_info.json").read_text())["readout_facts"]
    n_frames = sum(len(pf.read_shard(stem)[0]) for stem in pf.shards(frames))
    assert info_ceiling["labelled_frames"] == [str(frames)]
    assert info_ceiling["facts"]["train_frames"] == info_ceiling["facts"]["train"] + n_frames


def test_the_label_audit_replays_a_session_and_finds_each_fact_true_on_its_own_frame(coached, tmp_path, capsys):
    """benchmarks/fact_label_audit.py: the recorded episodes replay exactly (every recorded robot state
    reproduced) and every fact the coach said is true, by the simulator, on the frame it labels."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fact_label_audit.py"
    spec = importlib.util.spec_from_file_location("fact_label_audit", path)
    audit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(audit)
    out = tmp_path / "audit.json"
    assert audit.main([str(coached["sessions"]), "--span", "8", "--stride", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["episodes"] >= 1 and result["episodes_drifted"] == 0
    checked = result["all"]["own"]["frames"] + result["bowl_facts_unchecked"]
    assert checked == len(coached["said"]) and result["all"]["own"]["true"] == 1.0
    assert "fact labels against the simulator" in capsys.readouterr().out


def test_closed_loop_reading_compares_checkpoints_on_the_frames_a_robot_planned_from(grounded, coached, tmp_path):
    """benchmarks/closed_loop_reading.py: every plan's frame and every fact's frame of recorded runs, read by
    each checkpoint against the replayed simulator; a second call reads the truth from its cache."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "closed_loop_reading.py"
    spec = importlib.util.spec_from_file_location("closed_loop_reading", path)
    reading = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reading)
    out, cache = tmp_path / "reading.json", tmp_path / "truth.json"
    argv = [str(coached["sessions"]), "--checkpoint", f"tiny={grounded}", "--threads", "1", "--truth-cache", str(cache),
            "--json", str(out)]
    assert reading.main(argv) == 0
    first = json.loads(out.read_text())
    tiny = first["checkpoints"]["tiny"]
    plans = sum(1 for ep in read_session(next(coached["sessions"].iterdir())).episodes for p in ep.plans
                if p.plan.thought and p.plan.thought.startswith("I see:"))
    assert first["episodes_drifted"] == 0 and 1 <= tiny["plan_frames"]["n"] <= plans
    assert tiny["facts_read_as_stated"]["n"] == len(coached["said"])
    # the coach spoke because this planner's line was wrong on those frames: none reads them as the truth
    assert tiny["fact_frames"]["lines_right"] == 0.0 and tiny["facts_read_as_stated"]["share"] == 0.0
    assert cache.is_file()
    assert reading.main(argv) == 0 and json.loads(out.read_text())["checkpoints"] == first["checkpoints"]


def test_closed_loop_frames_become_planner_frames_labelled_by_the_simulator(grounded, coached, tmp_path):
    """benchmarks/closed_loop_frames.py: the plan frames of recorded runs, written as planner frames a
    read-out fine-tune reads, each labelled with the replayed simulator's scene."""
    import importlib.util
    from pathlib import Path

    from agent.training.facts_finetune import load_base_frames

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "closed_loop_frames.py"
    spec = importlib.util.spec_from_file_location("closed_loop_frames", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "frames"
    assert module.main([str(coached["sessions"]), "--out", str(out), "--image-size", "16"]) == 0
    frames = load_base_frames([str(out)], 16, 10_000, 0, log=lambda *_: None)
    plans = [p for ep in read_session(next(coached["sessions"].iterdir())).episodes for p in ep.plans
             if p.plan.thought and p.plan.thought.startswith("I see:")]
    assert 1 <= len(frames.tasks) <= len(plans) and frames.images.shape[1:] == (2, 16, 16, 3)
    # the images are the recorded frames (32 px) resized as the planner reads them, pixel for pixel (a
    # resized image once reached the file as a permuted view, scrambled), each row with the simulator's scene at its step
    from policies.pi05.processor import stack_cameras

    recorded = module.recorded_frames([coached["sessions"]], "base", lambda *_: None)
    first = recorded["is_plan"].index(True)
    assert torch.equal(frames.images[0], torch.from_numpy(stack_cameras(recorded["images"][first], ["front", "wrist"],
                                                                        16)))
    assert frames.facts[0] == recorded["truth"][first]
