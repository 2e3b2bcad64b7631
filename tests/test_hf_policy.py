"""`hf:PATH` high level: any local transformers VLM or LM, prompted from prompts/hf_planner.toml through
its chat template. The models here are tiny and random (built and saved locally; nothing downloaded),
so their plans are nonsense: the tests are about the prompt, the parsing and the loop around them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.cli import main as hivla
from agent.specs import SpecError, make_high_level
from policies.hf.planner import HfHighLevel
from policies.types import Correction, CorrectionKind, Observation, Plan, PlanContext
from sessions.reader import read_session
from tiny_hf import save_tiny_lm, save_tiny_vlm

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return save_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"))


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return save_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


def _obs() -> Observation:
    rng = np.random.default_rng(0)
    return Observation(images={c: rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for c in ("front", "wrist")},
                       state=np.zeros(8, np.float32), task="put the red block in the blue bowl", time=0.0)


def _context() -> PlanContext:
    return PlanContext(task="put the red block in the blue bowl",
                       plan_history=[Plan("", "pick up the red block")],
                       corrections=[Correction(CorrectionKind.CONSTRAINT, "never use the drawer"),
                                    Correction(CorrectionKind.CONFIRM, "good")],
                       completed_subtasks=["open the drawer"])


# ------------------------------------------------------------------------------------------- models


def test_a_tiny_vlm_sees_both_cameras_and_the_context(tiny_vlm):
    high = make_high_level(f"hf:{tiny_vlm}")
    assert isinstance(high, HfHighLevel) and high.is_vlm
    messages = high.messages(_obs().images, _context())
    assert [c["type"] for c in messages[0]["content"]] == ["image", "image", "text"]
    text = high.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    for needed in ("Task: put the red block in the blue bowl", "Done so far: open the drawer",
                   "Subtask in force: pick up the red block", '"never use the drawer"', "front and wrist camera"):
        assert needed in text
    assert '"good"' not in text  # a confirmation does not steer the plan
    inputs = high.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=True, return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 28, 28)
    plan = high.plan(_obs(), _context())
    assert isinstance(plan, Plan) and plan.subtask and plan.source == "model"
    assert high.last_answer is not None


def test_a_tiny_text_only_lm_plans_without_images(tiny_lm):
    high = make_high_level(f"hf:{tiny_lm}")
    assert not high.is_vlm
    (message,) = high.messages(_obs().images, _context())
    assert isinstance(message["content"], str) and "No camera images are attached" in message["content"]
    plan = high.plan(_obs(), _context())
    assert isinstance(plan, Plan) and plan.subtask


def test_an_unreadable_answer_keeps_the_subtask_in_force_and_says_so(tiny_lm, monkeypatch):
    high = HfHighLevel(tiny_lm)
    monkeypatch.setattr(high, "answer", lambda obs, ctx: "blue blue blue")
    plan = high.plan(_obs(), _context())
    assert plan.subtask == "pick up the red block"
    assert "could not read a plan" in plan.thought and "blue blue blue" in plan.thought
    assert high.last_error == plan.thought
    first = high.plan(_obs(), PlanContext(task="open the drawer"))  # no plan yet: the task itself
    assert first.subtask == "open the drawer"
    monkeypatch.setattr(high, "answer", lambda obs, ctx: "The drawer is shut. So: open the drawer.")
    assert high.plan(_obs(), _context()) == Plan("The drawer is shut.", "open the drawer", "model")
    assert high.last_error is None


def test_hf_specs_that_name_no_usable_model_are_refused(tmp_path, tiny_lm):
    with pytest.raises(SpecError, match="names no model directory"):
        make_high_level("hf:")
    with pytest.raises(SpecError, match="no config.json"):
        make_high_level(f"hf:{tmp_path / 'missing'}")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(SpecError, match="cannot load"):
        make_high_level(f"hf:{tmp_path / 'broken'}")
    import shutil

    no_template = tmp_path / "no_template"
    shutil.copytree(tiny_lm, no_template)
    for name in ("chat_template.jinja",):
        (no_template / name).unlink(missing_ok=True)
    import json

    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(SpecError, match="no chat template"):
        make_high_level(f"hf:{no_template}")


# ------------------------------------------------------------------------------------------- hivla coach


@pytest.mark.parametrize("model", ["tiny_vlm", "tiny_lm"])
def test_hivla_coach_runs_with_a_tiny_hf_model(model, request, tmp_path, capsys):
    model_dir = request.getfixturevalue(model)
    script = tmp_path / "script.txt"
    script.write_text("@4 never use the drawer\n@8 pick up the red block\n")
    out = tmp_path / "session"
    code = hivla(["coach", "--family", "put_color_in_bowl", "--seed", "0", "--high-level", f"hf:{model_dir}",
                  "--low-level", "expert", "--image-size", "64", "--replan-period", "0.5",
                  "--script", str(script), "--steps", "14", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    episode = read_session(out).episodes[0]
    assert len(episode.steps) == 14
    assert [c.kind for c in episode.corrections] == [CorrectionKind.CONSTRAINT, CorrectionKind.OVERRIDE]
    model_plans = [p for p in episode.plans if p.plan.source == "model"]
    assert len(model_plans) >= 2  # the first plan and the re-plan on the constraint, at least
    assert episode.corrections[1].model_plan is not None  # what the model would have done, logged
    assert episode.steps[-1].subtask == "pick up the red block"


def test_the_prompt_says_the_rules_and_facts_in_force_and_nothing_when_there_are_none():
    from policies.hf.planner import planner_fields
    from policies.planning import planner_context
    from policies.scene_line import Fact

    bare = planner_fields(planner_context("sort the blocks"))
    assert bare["memory"] == "" and bare["facts"] == ""
    fields = planner_fields(planner_context("sort the blocks", memory=["never use the red bowl"],
                                            facts=[Fact("blue block", "bowl", "green bowl"), Fact("drawer", "open")]))
    assert "never use the red bowl" in fields["memory"]
    assert "the blue block is in the green bowl; the drawer is open" in fields["facts"]
    assert fields["facts"].endswith("\n")
