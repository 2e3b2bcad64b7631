"""`hivla run --coach facts` (issue 33): the scripted coach that only states facts, in closed loop. A tiny
untrained grounded planner (saved as a pi05 checkpoint, so the run loads it through its spec like any
other) misreads the scene: the coach answers with what is true. The oracle reads it right: the coach
says nothing at all, where `--coach scripted` would still say something. The run's JSON, its printed
summary and its recorded sessions name the coach and count what it said."""

from __future__ import annotations

import json

import pytest
import torch

from agent.cli import main
from agent.envs import make_env
from policies.pi05.policy import save_checkpoint
from policies.types import CorrectionKind
from sessions.reader import Session, read_session
from test_fact_replan import tiny_grounded_planner

FAMILY, EPISODES = "put_color_in_bowl", 2


@pytest.fixture(scope="module")
def misreading_planner(tmp_path_factory):
    """A pi05:PATH checkpoint whose scene line names blocks the scene does not hold (random weights)."""
    obs, _ = make_env(family=FAMILY, image_size=32).reset(seed=0)
    policy = tiny_grounded_planner(len(obs["state"]), seed=0)
    return save_checkpoint(tmp_path_factory.mktemp("grounded") / "ckpt", policy.model, policy.processor.tok,
                           policy.processor.stats)


def run(tmp_path, high_level: str, coach: str, *extra: str) -> tuple[dict, Session]:
    """`hivla run` of EPISODES episodes with this coach: its --json metrics and its one recorded session."""
    torch.set_num_threads(1)
    metrics, sessions = tmp_path / f"{coach}.json", tmp_path / f"{coach}_sessions"
    code = main(["run", "--high-level", high_level, "--low-level", "expert", "--family", FAMILY,
                 "--episodes", str(EPISODES), "--image-size", "32", "--coach", coach, *extra,
                 "--json", str(metrics), "--out", str(sessions), "--quiet"])
    assert code == 0
    [session_dir] = list(sessions.iterdir())
    return json.loads(metrics.read_text()), read_session(session_dir)


def said(session: Session) -> list:
    return [c for episode in session.episodes for c in episode.corrections]


def test_the_facts_coach_states_what_a_misreading_planner_gets_wrong(misreading_planner, tmp_path, capsys):
    data, session = run(tmp_path, f"pi05:{misreading_planner}", "facts", "--max-steps", "40")
    corrections = said(session)
    assert corrections, "the facts coach said nothing to a planner that misreads the scene"
    assert all(c.kind is CorrectionKind.FACT and c.fact is not None and c.subtask is None and c.speaker == "scripted"
               for c in corrections), [(c.kind, c.text) for c in corrections]
    # which coach ran: in the JSON, the printed summary and the session header
    assert data["config"]["coach"] == "facts" and session.header.env["coach"] == "facts"
    assert "coach: facts" in capsys.readouterr().out
    # every fact is an intervention, counted per episode
    assert [e["interventions"] for e in data["episodes_detail"]] == [len(e.corrections) for e in session.episodes]
    assert data["interventions_per_episode"] == len(corrections) / EPISODES > 0


def test_the_facts_coach_says_nothing_to_a_planner_that_reads_right(tmp_path):
    # the scripted coach speaks in these very episodes (it confirms finished subtasks now and then) ...
    _, scripted = run(tmp_path, "oracle", "scripted")
    assert said(scripted) and all(e.end.success for e in scripted.episodes)
    # ... the facts coach does not: the oracle's scene line is true, and a fact is all it says
    data, facts = run(tmp_path, "oracle", "facts")
    assert said(facts) == [] and data["interventions_per_episode"] == 0


def test_facts_is_a_coach_choice_and_nonsense_is_not(capsys):
    # accepted by the parser and the checks: only the episode count stops it
    code = main(["run", "--high-level", "oracle", "--low-level", "expert", "--coach", "facts", "--episodes", "0",
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--episodes must be at least 1" in err and "--coach" not in err
    with pytest.raises(SystemExit) as refused:  # argparse's own refusal, with the choices it knows
        main(["run", "--coach", "gossip"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "invalid choice: 'gossip' (choose from 'none', 'scripted', 'facts')" in err


def test_an_error_rate_without_a_coach_is_refused_in_one_line(capsys):
    code = main(["run", "--high-level", "oracle", "--low-level", "expert", "--coach-error-rate", "0.2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--coach-error-rate is for --coach scripted or --coach facts" in err and "Traceback" not in err
