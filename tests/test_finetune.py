"""hivla finetune's pieces: what a correction teaches, the relabelled windows around it, the
high-level objective (text loss + low-level anchor), the frozen low level, LoRA merging, and the
two-process accelerate launch (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.training.corrections import (
    agreement_samples,
    correction_samples,
    is_held_out,
    load_coached_episodes,
)
from agent.training.finetune import (
    EXPERT_PREFIXES,
    HighLevelObjective,
    add_lora,
    freeze_low_level,
    merged_copy,
    reference_keys_values,
)
from agent.training.trainer import BATCH_KEYS
from policies.pi05.configuration import make_config
from policies.pi05.modeling import Pi05Model
from policies.types import CorrectionKind as K
from sessions.export.coaching import COACHED_THOUGHT
from sessions.recorder import SessionRecorder, make_header
from sessions.schema import CorrectionRecord, EpisodeEnd, EpisodeStart, PlanData, PlanEmitted, Step

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def record_coached_episode(path: Path, size: int = 16) -> Path:
    """30 steps: model plans A (0-4) and B (5-9), an override to C at 10 (suspect from 6: the coach
    saw B the step after it was made), C until 19, model plan D from 20, a nudge at 22, a negation at
    25 re-planned to E, an override to F at 28 (suspect from 26)."""
    header = make_header(high_level="pi05:x", low_level="expert", cameras={"front": (size, size), "wrist": (size, size)},
                         state_names=[f"s{i}" for i in range(8)], action_names=["dx", "dy", "dz", "dyaw", "grip"])
    A, B, C, D, E, F = ("pick up the red block", "pick up the blue block", "open the drawer", "pick up the green block",
                        "pick up the yellow block", "close the drawer")
    t = time.time()

    def plan(pid, step, sub, source, reason):
        return PlanEmitted(episode=0, step=step, plan_id=pid, plan=PlanData(thought="t", subtask=sub, source=source),
                           reason=reason, wall_time=t)

    def correction(cid, step, kind, text, replaced, resulting, suspect=None):
        return CorrectionRecord(episode=0, step=step, correction_id=cid, kind=kind, text=text, speaker="scripted",
                                replaced_plan=PlanData(thought="t", subtask=replaced, source="model"),
                                resulting_plan=None if resulting is None else PlanData(thought="t", subtask=resulting, source="human"),
                                suspect_from_step=suspect, mistake="wrong_order", wall_time=t)

    events = {0: [plan(0, 0, A, "model", "start")], 5: [plan(1, 5, B, "model", "timer")],
              10: [correction(0, 10, K.OVERRIDE, "open the drawer first", B, C, suspect=6), plan(2, 10, C, "human", "correction")],
              20: [plan(3, 20, D, "model", "subtask_done")],
              22: [correction(1, 22, K.NUDGE, "a bit left", D, None)],
              25: [correction(2, 25, K.NEGATION, "not that one", D, E), plan(4, 25, E, "model", "correction")],
              28: [correction(3, 28, K.OVERRIDE, "close the drawer", E, F, suspect=26), plan(5, 28, F, "human", "correction")]}
    in_force = {}
    current = None
    for k in range(30):
        for e in events.get(k, []):
            if isinstance(e, PlanEmitted):
                current = e
        in_force[k] = current
    rng = np.random.default_rng(0)
    with SessionRecorder(path, header) as rec:
        rec.start_episode(EpisodeStart(episode=0, task="tidy up", family="tidy_up", wall_time=t))
        for k in range(30):
            for e in events.get(k, []):
                rec.record(e)
            p = in_force[k]
            images = {c: rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for c in ("front", "wrist")}
            rec.record_step(Step(episode=0, step=k, frame=k, time=k / 10, wall_time=t, state=[0.0] * 8,
                                 action=[0.0] * 5, plan_id=p.plan_id, subtask=p.plan.subtask), images)
        rec.record(EpisodeEnd(episode=0, steps=30, success=False, subtasks_completed=0, subtasks_total=6,
                              reason="timeout", wall_time=t))
    return path


@pytest.fixture(scope="module")
def coached_session(tmp_path_factory):
    return record_coached_episode(tmp_path_factory.mktemp("s") / "session")


@pytest.fixture(scope="module")
def coached(coached_session):
    return load_coached_episodes([coached_session])


def test_what_each_correction_teaches(coached):
    (item,) = coached
    labels = item.labels
    # the override at 10 and the one at 28; the nudge says nothing about the next subtask and the
    # negation's re-plan was overruled three steps later
    assert [(lab.step, lab.kind, lab.subtask, lab.replaced) for lab in labels] == [
        (10, "override", "open the drawer", "pick up the blue block"),
        (28, "override", "close the drawer", "pick up the yellow block"),
    ]
    # the model's own plans the coach let stand: A (B was replaced by the override, D by the negation)
    assert item.approved == [(0, "pick up the red block")]


def test_windows_relabel_the_mistake_and_the_taught_subtask(coached):
    raw, owner = correction_samples(coached, ("front", "wrist"), image_size=16, horizon=4, before=10, after=5,
                                    include_approved=False, with_corrections=0.0)
    # override 1: steps 5-9 (from the decision for B to the correction) + 10-15 (C in force);
    # override 2: 25-27 + 28-29
    assert raw.plan_subtasks == ["open the drawer"] * 11 + ["close the drawer"] * 5
    assert owner == [0] * 11 + [1] * 5
    # a wrong plan's frames show the subtask in force before it was made (A, not the wrong B)
    assert raw.last_subtasks[:7] == ["pick up the red block"] * 6 + ["open the drawer"]
    assert raw.last_subtasks[11:14] == ["pick up the green block"] * 3  # before E (made at 25) came D
    assert raw.corrections == [[]] * 16, "the model must learn to do it unasked: no corrections in the context"
    short, owner = correction_samples(coached, ("front", "wrist"), image_size=16, horizon=4, before=2, after=0)
    # the approved decision at step 0, then steps 8, 9, 10 and 26, 27, 28
    assert short.plan_subtasks == ["pick up the red block"] + ["open the drawer"] * 3 + ["close the drawer"] * 3
    assert owner == [-1, 0, 0, 0, 1, 1, 1] and short.last_subtasks[0] is None
    assert set(raw.thoughts) == {COACHED_THOUGHT}
    assert raw.images[0].shape == (2, 16, 16, 3) and raw.actions[0].shape == (4, 5)
    # as in a coached run: from the correction's own step on, the context holds what was said
    coached_ctx, _ = correction_samples(coached, ("front", "wrist"), image_size=16, horizon=4, before=10, after=5,
                                        include_approved=False, with_corrections=1.0)
    assert coached_ctx.corrections[:5] == [[]] * 5 and coached_ctx.corrections[5] == ["open the drawer first"]
    assert coached_ctx.corrections[-1] == ["open the drawer first", "a bit left", "not that one", "close the drawer"]
    half, _ = correction_samples(coached, ("front", "wrist"), image_size=16, horizon=4, before=10, after=5,
                                 include_approved=False, with_corrections=0.5)
    with_ctx = sum(1 for c in half.corrections[5:] if c)
    assert 0 < with_ctx < 11
    agree, labels = agreement_samples(coached, ("front", "wrist"), image_size=16, horizon=4)
    assert len(agree) == 2 and agree.last_subtasks == ["pick up the red block", "pick up the green block"]


def test_history_contexts_of_the_windows_and_the_agreement_samples(coached):
    """context_last="history": the subtasks done at each frame (the table's `done` column) and the subtask
    in force the "in_force" rule picks, the one before a wrong plan included, in PlannerContext's phrase."""
    (item,) = coached
    done, last_done = item.episode.column("done"), item.episode.column("last_done")
    assert last_done == [d[-1] if d else None for d in done]  # last_done: the last of them
    assert done[:20] == [[]] * 20 and done[20:] == [["open the drawer"]] * 10  # D was planned because C finished
    raw, _ = correction_samples(coached, ("front", "wrist"), image_size=16, horizon=4, before=10, after=5,
                                include_approved=True, with_corrections=0.0, context_last="history")
    assert raw.last_subtasks == [
        None,  # the approved first plan: nothing done, nothing in force
        *["doing: pick up the red block"] * 6,  # 5-10: the decision for B was due with A in force
        *["doing: open the drawer"] * 5,  # 11-15: C in force
        # 25-28: the decision for E was due with D in force, after C was done; then F in force
        *["done: open the drawer | doing: pick up the green block"] * 4, "done: open the drawer | doing: close the drawer"]
    agree, _ = agreement_samples(coached, ("front", "wrist"), image_size=16, horizon=4, context_last="history")
    assert agree.last_subtasks == ["doing: pick up the red block", "done: open the drawer | doing: pick up the green block"]


def test_exports_choose_the_corrections(tmp_path, coached_session):
    from sessions.export import ExportOptions, export_sessions

    session = coached_session
    export_sessions([session], tmp_path / "sft", ExportOptions(format="sft"))
    (via_export,) = load_coached_episodes([tmp_path / "sft"])
    assert [lab.step for lab in via_export.labels] == [10, 28] and via_export.approved == [(0, "pick up the red block")]
    export_sessions([session], tmp_path / "only", ExportOptions(format="sft", only_corrections=True))
    (only,) = load_coached_episodes([tmp_path / "only"])
    assert [lab.step for lab in only.labels] == [10, 28] and only.approved == []  # no plan rows exported
    export_sessions([session], tmp_path / "pairs", ExportOptions(format="pairs", kinds=["override"]))
    assert [lab.step for lab in load_coached_episodes([tmp_path / "pairs"])[0].labels] == [10, 28]


def test_a_lerobot_export_teaches_what_the_sft_export_does(tmp_path, coached_session):
    """A LeRobot v3 export carries the same coaching table (its frames in the videos): the same
    labels, approved plans and samples as the SFT export, read with the session gone."""
    import shutil

    from sessions.export import ExportOptions, export_sessions

    session = shutil.copytree(coached_session, tmp_path / "session")
    export_sessions([session], tmp_path / "sft", ExportOptions(format="sft"))
    export_sessions([session], tmp_path / "lerobot", ExportOptions(format="lerobot", video_codec="lossless"))
    shutil.rmtree(session)
    (sft,), (lerobot,) = load_coached_episodes([tmp_path / "sft"]), load_coached_episodes([tmp_path / "lerobot"])
    assert lerobot.labels == sft.labels and [lab.step for lab in lerobot.labels] == [10, 28]
    assert lerobot.approved == sft.approved == [(0, "pick up the red block")]
    for build in (lambda c: correction_samples(c, ("front", "wrist"), image_size=16, horizon=4, with_corrections=0.5),
                  lambda c: agreement_samples(c, ("front", "wrist"), image_size=16, horizon=4, context_last="done")):
        a, b = build([sft])[0], build([lerobot])[0]
        assert len(a) == len(b) > 0
        np.testing.assert_array_equal(np.stack(a.images), np.stack(b.images))
        assert (a.plan_subtasks, a.last_subtasks, a.corrections, a.thoughts) == \
               (b.plan_subtasks, b.last_subtasks, b.corrections, b.thoughts)
        np.testing.assert_array_equal(np.stack(a.actions), np.stack(b.actions))


def test_the_exports_done_context_is_the_base_datas(coached_session, tmp_path):
    """The coaching table's last_done is the rule the base data is built with (dataset.last_completed),
    and a damaged table is one error that says to export again."""
    from agent.training.corrections import CorrectionDataError
    from agent.training.dataset import last_completed
    from sessions.export import ExportOptions, export_sessions
    from sessions.export.coaching import completed_subtasks
    from sessions.reader import read_session

    (ep,) = read_session(coached_session).episodes
    assert completed_subtasks(ep) == last_completed(ep.steps, sorted(ep.plans, key=lambda p: p.plan_id))
    assert any(completed_subtasks(ep))
    export_sessions([coached_session], tmp_path / "sft", ExportOptions(format="sft"))
    (tmp_path / "sft" / "coaching.parquet").write_bytes(b"not parquet")
    with pytest.raises(CorrectionDataError, match="export again"):
        load_coached_episodes([tmp_path / "sft"])


def test_held_out_split_is_stable():
    keys = [f"s{i}/{j}" for i in range(20) for j in range(5)]
    held = [k for k in keys if is_held_out(k, 0.2)]
    assert 5 < len(held) < 40 and held == [k for k in keys if is_held_out(k, 0.2)]
    assert not any(is_held_out(k, 0.0) for k in keys)


def tiny_batch(cfg, b: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {
        "images": torch.randint(0, 255, (b, len(cfg.cameras), cfg.image_size, cfg.image_size, 3), generator=g, dtype=torch.uint8),
        "prefix_ids": torch.randint(3, cfg.vocab_size, (b, cfg.prefix_text_len), generator=g),
        "context_ids": torch.randint(3, cfg.vocab_size, (b, cfg.max_context_tokens), generator=g),
        "subtask_ids": torch.randint(3, cfg.vocab_size, (b, cfg.max_subtask_tokens), generator=g),
        "target_ids": torch.randint(3, cfg.vocab_size, (b, cfg.max_target_tokens), generator=g),
        "actions": torch.zeros(b, cfg.action_horizon, cfg.action_dim), "action_mask": torch.ones(b, cfg.action_horizon, dtype=torch.bool),
    }
    for name in ("prefix", "context", "subtask", "target"):
        mask = torch.ones_like(batch[f"{name}_ids"], dtype=torch.bool)
        mask[0, -2:] = False  # some padding
        batch[f"{name}_mask"] = mask
    assert set(BATCH_KEYS) <= set(batch)
    return batch


def test_objective_trains_the_high_level_and_anchors_the_low_levels_inputs():
    torch.manual_seed(0)
    cfg = make_config("tiny")
    reference = Pi05Model(cfg).eval()
    model = Pi05Model(cfg)
    model.load_state_dict(reference.state_dict())
    freeze_low_level(model)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith(EXPERT_PREFIXES))
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith(("backbone", "vision", "embed")))
    batch = tiny_batch(cfg)
    objective = HighLevelObjective(model, anchor_weight=1.0)
    loss, info = objective(batch, reference_keys_values(reference, batch))
    assert info["anchor"] < 1e-8 and abs(info["text_loss"] - info["loss"]) < 1e-5
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith(EXPERT_PREFIXES))
    with torch.no_grad():
        model.backbone[0].k.weight.add_(0.05)
    _, info = objective(batch, reference_keys_values(reference, batch))
    assert info["anchor"] > 1e-3


def test_lora_merges_into_a_plain_checkpoint():
    torch.manual_seed(0)
    cfg = make_config("tiny")
    model = add_lora(Pi05Model(cfg), rank=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # as if trained (lora_B starts at zero)
    batch = tiny_batch(cfg)
    merged = merged_copy(model, cfg)
    h1, _, _ = model.eval().run_training_backbone(batch)
    h2, _, _ = merged.eval().run_training_backbone(batch)
    assert torch.allclose(h1, h2, atol=1e-4)
    assert not any("lora" in k for k in merged.state_dict())


def tiny_base_and_coaching(tmp_path: Path, episodes: int, steps: int, **overrides) -> tuple[Path, Path]:
    """Base sessions, a tiny base checkpoint trained `steps` steps on them (tmp_path/ckpt; `overrides`
    of its config), a coached session."""
    from agent.training.trainer import TrainSettings, train
    from sessions.synthetic import write_synthetic_session

    data = tmp_path / "base"
    write_synthetic_session(data / "a", episodes=episodes, steps=30, image_size=32, seed=0)
    train(TrainSettings(data=[str(data)], out=str(tmp_path / "ckpt"), preset="tiny", steps=steps, batch_size=8,
                        eval_every=steps, eval_samples=8, eval_generate=2, threads=1, warmup_steps=2, vocab_size=700,
                        overrides={"image_size": 32, **overrides}))
    return data, record_coached_episode(tmp_path / "coached" / "session", size=32)


@pytest.mark.slow
def test_accelerate_launch_two_processes_on_the_cpu(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (gloo on the CPU) runs the same fine-tune."""
    data, coached = tiny_base_and_coaching(tmp_path, episodes=3, steps=4)
    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "agent.commands.finetune",
           "--base", str(tmp_path / "ckpt"), "--data", str(coached), "--out", str(out), "--base-data", str(data),
           "--steps", "6", "--batch-size", "8", "--held-out-fraction", "0", "--threads", "1", "--base-stride", "2"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = (out / "finetune.log").read_text()
    assert "2 process(es) (MULTI_CPU, backend gloo)" in log
    summary = json.loads((out / "finetune_summary.json").read_text())
    assert summary["processes"] == 2 and summary["step"] == 6 and summary["after"]["train_agreement"] is not None
    from policies.pi05.policy import load_pi05

    assert load_pi05(out).cfg.preset == "tiny"


def test_sigterm_mid_finetune_saves_and_resume_continues(tmp_path, sigterm_at_step):
    from agent.training.finetune import FinetuneSettings, finetune
    from policies.pi05.policy import load_pi05

    data, coached = tiny_base_and_coaching(tmp_path, episodes=2, steps=2)
    out = tmp_path / "ft"
    s = FinetuneSettings(base=str(tmp_path / "ckpt"), data=[str(coached)], out=str(out), base_data=[str(data)], steps=6,
                         batch_size=4, held_out_fraction=0.0, base_stride=2, threads=1, progress=False)
    assert sigterm_at_step(3, lambda: finetune(s), out)["step"] == 3
    saved = json.loads((out / "finetune_state.json").read_text())
    assert saved["step"] == 3 and saved["before"]["train_agreement"] is not None
    assert load_pi05(out).cfg.preset == "tiny"
    s.resume = True
    summary = finetune(s)
    assert summary["step"] == 6 and summary["before"] == saved["before"] and summary["after"] is not None
    assert "resumed at step 3" in (out / "finetune.log").read_text()


def test_finetune_reads_the_export_alone(tmp_path, capsys):
    """The export holds everything a fine-tune needs: it runs with the coached sessions deleted. An
    export made before exports carried the labels is refused in one line that names the fix."""
    import shutil

    from agent.cli import main as hivla
    from agent.training.finetune import FinetuneSettings, finetune
    from sessions.export import ExportOptions, export_sessions

    data, coached = tiny_base_and_coaching(tmp_path, episodes=2, steps=2)
    export = tmp_path / "export"
    export_sessions([coached], export, ExportOptions(format="sft"))
    shutil.rmtree(coached.parent)
    summary = finetune(FinetuneSettings(base=str(tmp_path / "ckpt"), data=[str(export)], out=str(tmp_path / "ft"),
                                        base_data=[str(data)], steps=2, batch_size=4, held_out_fraction=0.0,
                                        base_stride=2, threads=1, progress=False))
    assert summary["step"] == 2 and summary["corrections"]["train_corrections"] == 2
    assert summary["corrections"]["approved_plan_samples"] == 1 and summary["after"]["train_agreement"] is not None

    manifest = json.loads((export / "manifest.json").read_text())
    (export / manifest.pop("coaching")).unlink()
    (export / "manifest.json").write_text(json.dumps(manifest))
    assert hivla(["finetune", "--base", str(tmp_path / "ckpt"), "--data", str(export), "--out", str(tmp_path / "ft2"),
                  "--base-data", str(data), "--steps", "1", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "export again with `hivla export" in err[0], err


def test_finetune_of_a_history_model(tmp_path, monkeypatch, capsys):
    """A base checkpoint that reads the episode's history (context_last="history", trained by `hivla train`
    on sessions) is fine-tuned from an export: its base and correction samples read "done: ..." /
    "doing: ..." phrases. An export made before the table carried the subtasks done is refused in one
    line that names the fix."""
    import pyarrow.parquet as pq

    import agent.training.finetune_data as finetune_data
    from agent.cli import main as hivla
    from policies.pi05.policy import load_pi05
    from sessions.export import ExportOptions, export_sessions

    data, coached = tiny_base_and_coaching(tmp_path, episodes=2, steps=2, context_last="history", max_context_tokens=40)
    export = tmp_path / "export"
    export_sessions([coached], export, ExportOptions(format="sft"))
    encoded = []
    real = finetune_data.encode_samples

    def spy(raw, processor):
        out = real(raw, processor)
        encoded.append((raw, out[0], processor))
        return out

    monkeypatch.setattr(finetune_data, "encode_samples", spy)
    args = ["finetune", "--base", str(tmp_path / "ckpt"), "--data", str(export), "--base-data", str(data),
            "--steps", "2", "--batch-size", "4", "--held-out-fraction", "0", "--threads", "1", "--base-stride", "2"]
    assert hivla([*args, "--out", str(tmp_path / "ft")]) == 0, capsys.readouterr().err
    assert load_pi05(tmp_path / "ft").cfg.context_last == "history"
    windows, agree, base = (raw for raw, _, _ in encoded)  # the corrections' windows, agreement samples, base data
    assert "done: open the drawer | doing: pick up the green block" in windows.last_subtasks
    assert agree.last_subtasks == ["doing: pick up the red block",
                                   "done: open the drawer | doing: pick up the green block"]
    phrases = [last for raw in (windows, agree, base) for last in raw.last_subtasks if last]
    assert phrases and all(last.startswith(("done: ", "doing: ")) for last in phrases)
    assert any(last.startswith("done: ") for last in base.last_subtasks if last)  # synthetic plans finish subtasks
    for raw, tensors, processor in encoded:  # what the model reads: the phrase first, then what was said
        texts = [processor.decode(ids[mask].tolist())
                 for ids, mask in zip(tensors["context_ids"], tensors["context_mask"].bool())]
        read = [t.strip() for t in texts if t.strip()]  # (the decoded text leaves out the <coach> mark)
        assert read and all(t.startswith(("done:", "doing:")) for t in read), read[:3]

    table = pq.read_table(export / "coaching.parquet")
    pq.write_table(table.drop(["done"]), export / "coaching.parquet")  # as an export of an older hivla wrote it
    old = load_coached_episodes([export])
    assert len(correction_samples(old, ("front", "wrist"), image_size=16, horizon=4, context_last="done")[0])
    capsys.readouterr()
    assert hivla([*args, "--out", str(tmp_path / "ft2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no 'done' column" in err[0] and "export again with `hivla export" in err[0], err


def test_a_plan_that_undid_progress_is_not_approved():
    from types import SimpleNamespace as NS

    from sessions.export.coaching import progress_thought, undid_progress

    steps = [NS(step=k, subtask_index=idx) for k, idx in enumerate([0, 0, 1, 1, 2, 1, 1, 2, 2, 3])]
    ep = NS(steps=steps, plans=[NS(step=0), NS(step=4), NS(step=7)], start=NS(subtasks=["a", "b", "c", "d"]))
    ep.position_of_step = lambda step: step
    assert not undid_progress(ep, 0)  # 0 -> 1: progress
    assert undid_progress(ep, 4)  # 2 -> 1 while this plan was in force
    assert not undid_progress(ep, 7)
    assert progress_thought(ep, 4) == "2 of 4 steps are done."
