"""A read-out that carries a belief (`readout_belief`): each block's query also reads what the read-out
read of it at the episode's previous plan, so a block the arm hides now, or one shut in the drawer, can
still be read where it was. Warm-started from a read-out without one it reads exactly as that one did;
it reads an episode's frames in order, each with the belief the frame before gave; it trains with the
truth of the frame before or the base's reading of it, or none; the planner keeps it between plans and
forgets it at a new episode; `hivla finetune --readout-belief` adds one to a shipped planner."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from agent.training.facts_finetune import add_belief
from agent.training.readout_trainer import FrameSet, beliefs_for, read_in_order
from policies.pi05.configuration import Pi05Config, make_config
from policies.pi05.objects import (
    BLOCK_NAMES, NO_SIDE, NO_WHERE, UNKNOWN_DRAWER, UNKNOWN_PLACE, ObjectReadout, belief_from_labels,
    belief_from_reading, labels_from_facts, unknown_belief,
)
from policies.pi05.policy import load_pi05
from policies.types import Observation, PlanContext
from test_facts_finetune import FAMILY, coached, finetune, frames, grounded, tensors  # noqa: F401 (fixtures)

torch.set_num_threads(1)


def tiny_readout(belief: bool, seed: int = 0) -> ObjectReadout:
    torch.manual_seed(seed)
    return ObjectReadout(make_config("tiny", vision_stem="objects", scene_bowls=True, readout_belief=belief)).eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 255, (n, 2, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def observation(seed: int = 3) -> Observation:
    """A planner's observation of two random camera frames (the tiny config's 32 px)."""
    frames = images(1, seed=seed)[0].numpy()
    return Observation(images={"front": frames[0], "wrist": frames[1]}, state=np.zeros(8, np.float32),
                       task="put the red block in the blue bowl", time=0.0)


def test_a_belief_added_to_a_read_out_leaves_its_reading_as_it_was_until_trained():
    plain, believing = tiny_readout(False), tiny_readout(True)
    missing, unexpected = believing.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("belief_") for k in missing)
    x = images(3)
    with torch.no_grad():
        before = plain.features(x)
        held = belief_from_reading(plain.heads(before))
        assert torch.equal(believing.features(x, held), before)  # the gate is shut
        believing.belief_gate.fill_(1.0)
        # opened, what it believed changes what it reads, and no belief is not the same as this one
        assert not torch.allclose(believing.features(x, held), before)
        assert not torch.allclose(believing.features(x, held), believing.features(x, None))


def test_a_belief_is_read_from_the_heads_and_from_the_labels_alike():
    facts = {"blocks": {"red block": {"place": "bowl", "where": "blue bowl", "x": 0.1},
                        "green block": {"place": "table", "where": None, "x": -0.2}},
             "bowls": ["blue bowl"], "drawer_open": True}
    labels = {k: torch.tensor([v]) for k, v in labels_from_facts(facts).items()}
    truth = belief_from_labels(labels)
    red, green, blue = (BLOCK_NAMES.index(n) for n in ("red block", "green block", "blue block"))
    assert truth["where"][0, green] == NO_WHERE and truth["side"][0, red] == NO_SIDE
    assert truth["place"][0, blue] == 0 and truth["drawer"][0] == 1
    # heads that read exactly these labels give the same belief (x within the head's scale)
    heads = {"place": torch.nn.functional.one_hot(labels["place"], 7).float() * 9,
             "where": torch.nn.functional.one_hot(labels["where"].clamp(min=0), NO_WHERE).float() * 9,
             "side": torch.nn.functional.one_hot(labels["side"].clamp(min=0), NO_SIDE).float() * 9,
             "x": labels["x"] / 0.3, "drawer": torch.tensor([[0.0, 9.0]])}
    read = belief_from_reading(heads)
    for k in ("place", "where", "side", "drawer"):
        assert torch.equal(read[k], truth[k]), k
    assert torch.allclose(read["x"], truth["x"])
    none = unknown_belief(2)
    assert (none["place"] == UNKNOWN_PLACE).all() and (none["drawer"] == UNKNOWN_DRAWER).all()


def test_an_episode_is_read_in_order_each_frame_with_the_belief_the_frame_before_left():
    readout = tiny_readout(True, seed=1)
    with torch.no_grad():
        readout.belief_gate.fill_(1.0)
    x = images(5, seed=2)
    previous = torch.tensor([-1, 0, 1, -1, 3])  # two episodes: frames 0-1-2 and 3-4
    out = read_in_order(readout, x, previous, "fp32", torch.device("cpu"), batch_size=2)
    with torch.no_grad():
        expected, beliefs = {}, {}
        for i, p in enumerate(previous.tolist()):
            belief = None if p < 0 else beliefs[p]
            heads = readout.heads(readout.features(x[i:i + 1], belief))
            beliefs[i], expected[i] = belief_from_reading(heads), heads
    for k in out:
        assert torch.allclose(out[k], torch.cat([expected[i][k] for i in range(5)]), atol=1e-5), k


def test_frames_train_with_the_truth_before_the_reading_before_or_nothing():
    facts = [{"blocks": {"red block": {"place": "table", "where": None, "x": 0.2 * i}}, "bowls": [],
              "drawer_open": False} for i in range(4)]
    rows = [labels_from_facts(f) for f in facts]
    labels = {k: torch.tensor([r[k] for r in rows], dtype=torch.float32 if k == "x" else torch.long)
              for k in rows[0]}
    frames = FrameSet(torch.zeros(4, 2, 8, 8, 3, dtype=torch.uint8), labels, torch.tensor([0, 0, 0, 1]),
                      ["t"] * 4, facts, ["f"] * 4, torch.tensor([-1, 0, 1, -1]))
    read = unknown_belief(4)
    read["place"][:] = 2  # a read-out that read every block as held
    idx = torch.arange(4)
    red = BLOCK_NAMES.index("red block")
    g = torch.Generator().manual_seed(0)
    truth = beliefs_for(frames, idx, read, unknown=0.0, from_read=0.0, generator=g)
    assert truth["place"][:, red].tolist() == [UNKNOWN_PLACE, 1, 1, UNKNOWN_PLACE]  # episodes' firsts: nothing
    assert torch.allclose(truth["x"][1:3, red], torch.tensor([0.0, 0.2]))  # the frame before's x
    assert beliefs_for(frames, idx, read, 0.0, 1.0, g)["place"][:, red].tolist() == [UNKNOWN_PLACE, 2, 2,
                                                                                     UNKNOWN_PLACE]
    assert (beliefs_for(frames, idx, read, 1.0, 0.0, g)["place"] == UNKNOWN_PLACE).all()


def test_the_finetune_adds_a_belief_the_planner_keeps_between_plans_and_forgets_at_reset(grounded, coached,
                                                                                          frames, tmp_path):
    out = tmp_path / "belief"
    assert finetune(grounded, coached["sft"], frames, out, "--steps", "3", "--batch-size", "8", "--readout-scope",
                    "readout", "--readout-belief", "--fact-share", "0") == 0
    assert json.loads((out / "config.json").read_text())["readout_belief"] is True
    info = json.loads((out / "checkpoint_info.json").read_text())["readout_facts"]
    assert info["belief"] is True and info["control"] is True
    changed = {k for k, v in tensors(out).items() if k.startswith("vision.belief_")}
    assert "vision.belief_gate" in changed and bool(tensors(out)["vision.belief_gate"].abs().sum() > 0)
    policy = load_pi05(out)
    obs = observation()
    policy.reset()
    policy.generate_plan(obs, PlanContext(task=obs.task))
    with torch.no_grad():
        x = torch.from_numpy(policy.processor.prepare_images(obs.images))[None]
        first = belief_from_reading(policy.model.vision.heads(policy.model.vision.features(x)))
    assert torch.equal(policy._belief["place"], first["place"])  # what it read, kept for the next plan
    policy.reset()
    assert policy._belief is None
    # the offline evaluation reads each held-out episode in order and decides with the belief it carried
    offline = load_benchmark("offline_eval")
    result = tmp_path / "offline.json"
    assert offline.main(["--checkpoint", str(out), "--data", str(frames), "--frames", "8", "--threads", "1",
                         "--questions", "0", "--json", str(result)]) == 0
    assert json.loads(result.read_text())["decisions"]["all"]["frames"] >= 1


def test_the_belief_needs_the_whole_read_out_trained(grounded, coached, frames, tmp_path, capsys):
    from agent.cli import main

    code = main(["finetune", "--base", str(grounded), "--data", str(coached["sft"]), "--readout-facts",
                 "--readout-belief", "--base-data", str(frames), "--out", str(tmp_path / "x"), "--steps", "1"])
    err = capsys.readouterr().err
    assert code != 0 and "--readout-scope readout" in err and len(err.strip().splitlines()) == 1


def test_add_belief_keeps_every_tensor_of_the_read_out(grounded):
    from policies.pi05.policy import load_checkpoint

    model, _ = load_checkpoint(grounded)
    before = {k: v.clone() for k, v in model.vision.state_dict().items()}
    add_belief(model)
    assert model.cfg.readout_belief and model.vision.reads_belief
    after = model.vision.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert model.cfg == dataclasses.replace(Pi05Config.load(grounded / "config.json"), readout_belief=True)


def load_benchmark(name: str):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("plans", [[True, False, True, True], [False, True, False]])
def test_closed_loop_reading_gives_each_frame_its_episodes_plan_before(plans):
    reading = load_benchmark("closed_loop_reading")
    frames = {"episode": ["a"] * len(plans) + ["b"], "is_plan": plans + [True]}
    got = reading.plans_before(frames).tolist()
    last, want = -1, []
    for row, is_plan in enumerate(plans):
        want.append(last)
        last = row if is_plan else last
    assert got == want + [-1]


def test_a_fact_is_learned_with_the_belief_its_frame_was_read_with(grounded, coached, frames, tmp_path):
    from agent.training.facts_finetune import fact_beliefs, load_fact_rows, plan_steps
    from policies.pi05.policy import load_checkpoint
    from sessions.reader import read_session

    believing = tmp_path / "believing"
    assert finetune(grounded, coached["sft"], frames, believing, "--steps", "2", "--batch-size", "8",
                    "--readout-scope", "readout", "--readout-belief", "--fact-share", "0") == 0
    model, _ = load_checkpoint(believing)
    readout, cfg = model.vision.eval(), model.cfg
    rows = load_fact_rows([coached["sessions"]], cfg.cameras, cfg.image_size, log=lambda *_: None, history=True)
    episodes = {f"{s.header.session_id}/{ep.episode}": ep for s in map(read_session, coached["sessions"].iterdir())
                for ep in s.episodes}
    lags = [len(h) for h in rows.history]
    assert any(lags)
    for key, history, n in zip(rows.episodes, rows.history, lags):  # every plan before the fact's frame
        assert n <= len(plan_steps(episodes[key]))
    beliefs = fact_beliefs(readout, rows, "fp32", torch.device("cpu"))
    row = lags.index(max(lags))
    chain = rows.history[row]
    heads = read_in_order(readout, chain, torch.arange(len(chain)) - 1, "fp32", torch.device("cpu"))
    expected = belief_from_reading({k: v[-1:] for k, v in heads.items()})  # what the last plan read
    for k in expected:
        assert torch.allclose(beliefs[k][row:row + 1].float(), expected[k].float()), k
    # and a facts arm on that read-out trains with them
    out = tmp_path / "facts_on_belief"
    assert finetune(believing, coached["sessions"], frames, out, "--steps", "2", "--batch-size", "8",
                    "--readout-scope", "readout", "--fact-share", "0.5") == 0
    assert json.loads((out / "config.json").read_text())["readout_belief"] is True


def test_the_evaluations_read_a_believing_read_out_through_its_episodes_in_order():
    from agent.training.facts_finetune import reading_by_kind
    from agent.training.readout_trainer import evaluate_readout, heads_in_order

    readout = tiny_readout(True, seed=4)
    with torch.no_grad():
        readout.belief_gate.fill_(1.0)
    facts = [{"blocks": {"red block": {"place": "table", "where": None, "x": 0.1 * i}}, "bowls": [],
              "drawer_open": False} for i in range(5)]
    rows = [labels_from_facts(f) for f in facts]
    labels = {k: torch.tensor([r[k] for r in rows], dtype=torch.float32 if k == "x" else torch.long)
              for k in rows[0]}
    frames = FrameSet(images(5, seed=5), labels, torch.tensor([0, 0, 0, 1, 1]), ["stack them"] * 5, facts,
                      ["f"] * 5, torch.tensor([-1, 0, 1, -1, 3]))
    cpu = torch.device("cpu")
    idx = torch.tensor([2, 4])  # frames late in their episodes: their beliefs come from the frames before
    in_order = heads_in_order(readout, frames, torch.arange(5), "fp32", cpu)
    alone = {k: v for k, v in readout.heads(readout.features(frames.images)).items()}
    assert not torch.allclose(in_order["place"][idx], alone["place"][idx])
    assert evaluate_readout(readout, frames, idx, "fp32", cpu) == evaluate_readout(readout, frames, idx, "fp32", cpu,
                                                                                   heads=in_order)
    by_kind = reading_by_kind(readout, frames, idx, "fp32", cpu)
    assert by_kind["kinds"] == reading_by_kind(readout, frames, idx, "fp32", cpu, heads=in_order)["kinds"]
