"""`/ask`: a question goes to the high level, is answered from the current frames, recorded as a
`vqa` event and exported as LeRobot `vqa` rows; it never changes the plan."""

from __future__ import annotations

import pyarrow.parquet as pq

from agent.console.controller import CoachController
from agent.envs import make_env
from agent.envs.oracle import OraclePlanner
from oracle_session import recorded_loop
from policies.base import SceneQuestionAnswerer
from sessions.export import ExportOptions, export_sessions
from sessions.reader import read_session


class AnsweringOracle(OraclePlanner):
    """The oracle's plans, and answers read off the privileged scene (a stand-in for a learned planner)."""

    def answer(self, obs, question):
        return "the " + " and the ".join(sorted(obs.privileged.blocks))


def test_a_question_is_answered_recorded_and_exported_and_never_changes_the_plan(tmp_path):
    env = make_env(family="put_color_in_bowl", image_size=32)
    high = AnsweringOracle(seed=0)
    assert isinstance(high, SceneQuestionAnswerer)
    with recorded_loop(tmp_path / "s", env, high, seed=0) as loop:
        loop.reset(seed=0)
        for _ in range(5):
            loop.step()
        before = (loop.snapshot().plan, len(loop._context.plan_history), list(loop._context.corrections))
        out = CoachController(loop).handle("/ask what is on the table?")
        after = (loop.snapshot().plan, len(loop._context.plan_history), list(loop._context.corrections))
        assert out.reply.startswith("Q: what is on the table?\nA: the ") and out.submitted is None
        assert after == before  # no plan, no correction, no context change
        for _ in range(3):
            loop.step()
    episode = read_session(tmp_path / "s").episodes[0]
    [q] = episode.questions
    assert q.question == "what is on the table?" and q.answer == out.reply.split("A: ", 1)[1] and q.step == 5
    assert episode.corrections == []
    export_sessions([tmp_path / "s"], tmp_path / "ds", ExportOptions(format="lerobot", video_codec="lossless"))
    rows = pq.read_table(tmp_path / "ds" / "data" / "chunk-000" / "file-000.parquet").to_pylist()
    vqa = [(r["frame_index"], e) for r in rows for e in r["language_events"] if e["style"] == "vqa"]
    assert [(f, e["role"], e["content"]) for f, e in vqa] == [(5, "user", q.question), (5, "assistant", q.answer)]
    assert {e["camera"] for _, e in vqa} == {"observation.images.front"}
