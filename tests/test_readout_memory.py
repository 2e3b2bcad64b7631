"""A read-out with memory (`readout_memory`): its belief keeps a block read at an earlier plan and not at the
last one, marked carried, so a block hidden for several plans in a row is still believed where it was last
read; the read-out learns when to trust that. Added to a believing read-out it reads exactly as before until
trained; an episode read in order carries it from frame to frame as the planner does between plans."""

from __future__ import annotations

import json

import pytest
import torch

from agent.training.readout_trainer import read_episodes
from policies.pi05.configuration import make_config
from policies.pi05.objects import BLOCK_NAMES, PLACES, UNKNOWN_PLACE, ObjectReadout, carry_belief, unknown_belief
from policies.pi05.policy import load_pi05
from policies.types import PlanContext
from test_facts_finetune import coached, finetune, frames, grounded, tensors  # noqa: F401 (fixtures)
from test_readout_belief import images, observation

torch.set_num_threads(1)
RED, GREEN = BLOCK_NAMES.index("red block"), BLOCK_NAMES.index("green block")


def readout(memory: bool, seed: int = 0) -> ObjectReadout:
    torch.manual_seed(seed)
    cfg = make_config("tiny", vision_stem="objects", scene_bowls=True, readout_belief=True, readout_memory=memory)
    return ObjectReadout(cfg).eval()


def test_a_block_read_before_and_not_now_is_carried_and_marked():
    before = unknown_belief(1)
    before["place"][0, RED], before["x"][0, RED] = PLACES.index("table"), -0.2
    before["place"][0, GREEN] = 0  # believed absent: nothing to carry
    read = unknown_belief(1)
    read["place"][:] = 0  # read nothing now
    read["place"][0, GREEN] = PLACES.index("held")
    got = carry_belief(read, before)
    assert got["place"][0, RED] == PLACES.index("table") and got["x"][0, RED] == pytest.approx(-0.2)
    assert got["stale"][0].nonzero().flatten().tolist() == [RED]
    assert got["place"][0, GREEN] == PLACES.index("held")  # read now: the reading wins
    # nothing known before (an episode's first plan) carries nothing
    assert not carry_belief(read, unknown_belief(1))["stale"].any()
    assert (unknown_belief(1)["place"] == UNKNOWN_PLACE).all()


def test_memory_added_to_a_believing_read_out_reads_as_before_until_trained():
    believing, remembering = readout(False), readout(True)
    missing, unexpected = remembering.load_state_dict(believing.state_dict(), strict=False)
    assert missing == ["belief_stale.weight"] and not unexpected
    with torch.no_grad():
        believing.belief_gate.fill_(1.0), remembering.belief_gate.fill_(1.0)
        belief = unknown_belief(2)
        belief["place"][:, RED], belief["stale"][:, RED] = PLACES.index("table"), 1
        x = images(2)
        assert torch.equal(remembering.features(x, belief), believing.features(x, belief))
        remembering.belief_stale.weight.normal_()
        assert not torch.allclose(remembering.features(x, belief), believing.features(x, belief))


def test_an_episode_read_in_order_carries_what_the_frame_before_left():
    remembering = readout(True, seed=1)
    with torch.no_grad():
        remembering.belief_gate.fill_(1.0)
        remembering.belief_stale.weight.normal_()
    x = images(5, seed=2)
    previous = torch.tensor([-1, 0, 1, -1, 3])
    heads, left = read_episodes(remembering, x, previous, "fp32", torch.device("cpu"), batch_size=2)
    with torch.no_grad():
        carried = {}
        for i, p in enumerate(previous.tolist()):
            belief = None if p < 0 else carried[p]
            h = remembering.heads(remembering.features(x[i:i + 1], belief))
            carried[i] = remembering.belief_after(h, belief)
            assert torch.allclose(heads["place"][i:i + 1], h["place"], atol=1e-5)
    for k in left:
        assert torch.allclose(left[k].float(), torch.cat([carried[i][k] for i in range(5)]).float()), k


def test_a_config_with_memory_and_no_belief_is_refused():
    with pytest.raises(ValueError, match="readout_belief=true"):
        make_config("tiny", vision_stem="objects", readout_memory=True).validate()


def test_the_finetune_adds_memory_the_planner_carries_between_plans(grounded, coached, frames, tmp_path):
    out = tmp_path / "memory"
    assert finetune(grounded, coached["sft"], frames, out, "--steps", "3", "--batch-size", "8", "--readout-scope",
                    "readout", "--readout-memory", "--fact-share", "0") == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["readout_belief"] is True and cfg["readout_memory"] is True
    assert "vision.belief_stale.weight" in tensors(out)
    policy = load_pi05(out)
    obs = observation()
    policy.reset()
    policy.generate_plan(obs, PlanContext(task=obs.task))
    held = {k: v.clone() for k, v in policy._belief.items()}
    policy.generate_plan(obs, PlanContext(task=obs.task))
    vision = policy.model.vision
    with torch.no_grad():
        x = torch.from_numpy(policy.processor.prepare_images(obs.images))[None]
        expected = vision.belief_after(vision.heads(vision.features(x, held)), held)
    assert torch.equal(policy._belief["stale"], expected["stale"])
    assert torch.equal(policy._belief["place"], expected["place"])
