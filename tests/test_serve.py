"""openpi's websocket protocol both ways: `hivla serve` for hivla's learned low level, and the
`openpi:HOST:PORT` low-level spec driving a remote server. Servers bind 127.0.0.1 on a free port and
stop at the end of each test."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from agent.cli import main as hivla
from agent.envs import make_env
from agent.envs.oracle import OraclePlanner
from agent.loop import ControlLoop
from memory_recorder import MemoryRecorder
from agent.specs import SpecError, make_low_level
from policies.openpi.client import OpenpiLowLevel, OpenpiServerError, RobotMapping, parse_openpi_spec
from policies.openpi.msgpack_numpy import WireError, packb, unpackb
from policies.openpi.server import PolicyServer, ServedPolicy
from policies.types import Observation
from policies.vla.policy import VlaLowLevel, load_vla

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
FAMILY = "block_in_drawer_and_close"


@pytest.fixture(scope="module")
def policy(random_vla_checkpoint):
    return load_vla(random_vla_checkpoint)


@pytest.fixture()
def server(policy):
    srv = PolicyServer(ServedPolicy(policy, "vla:test"), "127.0.0.1", 0)
    with srv.running():
        yield srv


def _obs(size=64, seed=0) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(images={"front": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                               "wrist": rng.integers(0, 255, (size, size, 3), dtype=np.uint8)},
                       state=rng.normal(size=8).astype(np.float32), task="open the drawer", time=0.0)


def _request(meta: dict, seed=0) -> dict:
    """What an openpi client builds from the metadata frame: every key it names, at the size it asks."""
    h, w, _ = meta["image_shape"]
    rng = np.random.default_rng(seed)
    keys = meta["observation_keys"]
    req = {key: rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for key in keys["images"].values()}
    req[keys["state"]] = rng.normal(size=meta["state_dim"]).astype(np.float32)
    req[keys["prompt"]] = "pick up the red block"
    return req


# ------------------------------------------------------------------------------------------- wire format


def test_arrays_travel_as_openpi_ndarray_maps():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = msgpack.unpackb(packb({"a": arr, "s": np.float32(2.5), "p": "text"}), raw=False)
    assert raw["a"] == {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": "<f4", b"shape": [2, 3]}
    assert raw["s"] == {b"__npgeneric__": True, b"data": 2.5, b"dtype": "<f4"}
    back = unpackb(packb({"a": arr, "p": "text"}))
    assert back["p"] == "text" and back["a"].dtype == np.float32 and np.array_equal(back["a"], arr)


@pytest.mark.parametrize("frame", [
    b"\xc1 not msgpack",
    msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}),  # object dtype
    msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 3, b"dtype": "<f4", b"shape": [1000, 1000]}),
    msgpack.packb({b"__ndarray__": True, b"data": "text", b"dtype": "<f4", b"shape": [1]}),
])
def test_malformed_wire_data_is_refused_without_building_anything(frame):
    with pytest.raises(WireError):
        unpackb(frame)


# ------------------------------------------------------------------------------------------- the server


def test_openpi_client_style_request_loop(server):
    """The documented exchange, written as openpi-client 0.1.2's WebsocketClientPolicy does it."""
    with connect(f"ws://127.0.0.1:{server.port}", compression=None, max_size=None) as ws:
        meta = unpackb(ws.recv(timeout=10))
        assert meta["server"] == "hivla" and meta["chunk_size"] == 4 and meta["action_dim"] == 5
        assert meta["image_shape"] == [32, 32, 3] and meta["state_dim"] == 8
        assert set(meta["observation_keys"]["images"]) == {"front", "wrist"}
        for i in range(5):
            ws.send(packb(_request(meta, seed=i)))
            reply = ws.recv(timeout=10)
            assert isinstance(reply, bytes), reply
            out = unpackb(reply)
            assert out["actions"].dtype == np.float32 and out["actions"].shape == (4, 5)
            assert out["server_timing"]["infer_ms"] > 0 and out["policy_timing"]["infer_ms"] > 0
            assert ("prev_total_ms" in out["server_timing"]) == (i > 0)
    assert server.requests_served == 5


def _malformed(meta: dict) -> dict[str, object]:
    good = _request(meta)
    float_image = dict(good, **{"observation/front_image": good["observation/front_image"].astype(np.float32)})
    int_state = dict(good, **{"observation/state": np.arange(8, dtype=np.int64)})
    short_state = dict(good, **{"observation/state": np.zeros(3, np.float32)})
    number_prompt = dict(good, prompt=7)
    return {
        "not msgpack": b"\x00\xc1\xff this is not msgpack",
        "a text frame": "hello",
        "not a map": packb([1, 2, 3]),
        "wrong keys": packb({"observation/image": good["observation/front_image"], "prompt": "x"}),
        "float image": packb(float_image),
        "int state": packb(int_state),
        "short state": packb(short_state),
        "number prompt": packb(number_prompt),
        "object dtype": msgpack.packb(dict(good, **{"observation/state": {
            b"__ndarray__": True, b"data": b"\0" * 64, b"dtype": "|O", b"shape": [8]}}), default=lambda a: {
            b"__ndarray__": True, b"data": a.tobytes(), b"dtype": a.dtype.str, b"shape": list(a.shape)}),
        "50 MB frame": packb(dict(good, **{"observation/front_image": np.zeros((4096, 4096, 3), np.uint8)})),
    }


def test_malformed_frames_get_an_error_and_the_server_stays_up(server):
    with connect(f"ws://127.0.0.1:{server.port}", compression=None, max_size=None) as bystander:
        meta = unpackb(bystander.recv(timeout=10))
        for name, frame in _malformed(meta).items():
            with connect(f"ws://127.0.0.1:{server.port}", compression=None, max_size=None) as ws:
                ws.recv(timeout=10)  # metadata
                ws.send(frame)
                with pytest.raises(ConnectionClosed) as closed:
                    message = ws.recv(timeout=20)
                    assert isinstance(message, str) and "bad request" in message, (name, message)
                    ws.recv(timeout=20)
                code = closed.value.rcvd.code if closed.value.rcvd else None
                assert code == (1009 if name == "50 MB frame" else 1007), (name, closed.value)
        # the connection that stayed open and a new one are both still served
        bystander.send(packb(_request(meta)))
        assert unpackb(bystander.recv(timeout=10))["actions"].shape == (4, 5)
    with connect(f"ws://127.0.0.1:{server.port}", compression=None, max_size=None) as ws:
        meta = unpackb(ws.recv(timeout=10))
        ws.send(packb(_request(meta)))
        assert unpackb(ws.recv(timeout=10))["actions"].shape == (4, 5)
    assert server.requests_refused == len(_malformed(meta)) - 1  # the oversized frame never reached the handler


def test_error_messages_name_the_problem(server):
    with connect(f"ws://127.0.0.1:{server.port}", compression=None, max_size=None) as ws:
        meta = unpackb(ws.recv(timeout=10))
        ws.send(packb({"prompt": "x"}))
        message = ws.recv(timeout=10)
    assert "missing keys" in message and "observation/front_image" in message and "observation/state" in message


def test_healthz_and_api_key(policy):
    srv = PolicyServer(ServedPolicy(policy, "vla:test"), "127.0.0.1", 0, api_key="s3cret")
    with srv.running():
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b"OK\n"
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{srv.port}", open_timeout=10)
        assert refused.value.response.status_code == 401
        low = OpenpiLowLevel("127.0.0.1", srv.port, api_key="s3cret")
        assert low.act(_obs(), "open the drawer").shape == (2, 5)
        low.close()


# ------------------------------------------------------------------------------------------- the client


def test_openpi_low_level_gives_the_local_policys_actions(server, policy):
    low = make_low_level(f"openpi:127.0.0.1:{server.port}")
    local = VlaLowLevel(policy)
    for seed in range(3):
        obs = _obs(size=128, seed=seed)
        remote_chunk, local_chunk = low.act(obs, "open the drawer"), local.act(obs, "open the drawer")
        assert remote_chunk.shape == local_chunk.shape == (2, 5)  # n_action_steps of the metadata
        np.testing.assert_allclose(remote_chunk, local_chunk, atol=1e-5)
    low.close()


def test_openpi_specs_are_checked():
    assert parse_openpi_spec("localhost:8000") == ("localhost", 8000, "hivla")
    assert parse_openpi_spec("10.0.0.2:9000:libero") == ("10.0.0.2", 9000, "libero")
    for bad in ("openpi:", "openpi:localhost", "openpi:host:port", "openpi:host:0", "openpi:h:80:nosuchrobot"):
        with pytest.raises(SpecError):
            make_low_level(bad)
    with pytest.raises(SpecError, match="hivla serve"):  # nothing listens on port 9 (discard) here
        make_low_level("openpi:127.0.0.1:9")


def test_robot_mappings_for_libero_and_droid_build_their_requests():
    obs = _obs(size=128)
    libero = RobotMapping.load("libero")
    req = libero.request(obs, "put the bowl on the plate", libero.image_size)
    assert set(req) == {"observation/image", "observation/wrist_image", "observation/state", "prompt"}
    assert req["observation/image"].shape == (224, 224, 3) and req["observation/state"].shape == (8,)
    chunk = libero.actions({"actions": np.tile(np.array([1, -1, 0.5, 0, 0, 0.2, 1.0], np.float32), (10, 1))})
    np.testing.assert_allclose(chunk[0], [0.05, -0.05, 0.025, 0.1, 1.0], rtol=1e-6)
    droid = RobotMapping.load("droid")
    req = droid.request(obs, "x", droid.image_size)
    assert req["observation/joint_position"].shape == (7,) and req["observation/gripper_position"].shape == (1,)
    assert set(k for k in req if "image" in k) == {"observation/exterior_image_1_left", "observation/wrist_image_left"}
    np.testing.assert_allclose(droid.actions({"actions": np.ones((15, 8), np.float32)})[0], [0, 0, 0, 0, 1.0])
    with pytest.raises(OpenpiServerError):
        libero.actions({"actions": np.ones((10, 3), np.float32)})  # too few dims for the mapping


def test_a_mapping_that_does_not_match_the_servers_metadata_is_refused(server):
    with pytest.raises(SpecError, match="expects keys"):
        make_low_level(f"openpi:127.0.0.1:{server.port}:libero")


def test_a_lost_connection_pauses_the_episode_and_it_resumes_after_reconnecting(policy):
    served = ServedPolicy(policy, "vla:test")
    first = PolicyServer(served, "127.0.0.1", 0)
    recorder = MemoryRecorder()
    env = make_env(suite="base", image_size=64)
    with first.running():
        port = first.port
        low = OpenpiLowLevel("127.0.0.1", port, retry_s=0.05, open_timeout_s=2.0)
        loop = ControlLoop(env, OraclePlanner(seed=0), low, recorder=recorder, compute_model_plan=False)
        loop.reset(seed=10, options={"family": FAMILY})
        for _ in range(4):
            loop.step()
    assert not any(s.paused for s in recorder.steps)
    for _ in range(6):  # the server is gone: every step holds, is recorded as paused, and says why
        loop.step()
    assert [s.paused for s in recorder.steps[-5:]] == [True] * 5
    assert "lost the openpi server" in loop.snapshot().last_reply and "reconnecting" in loop.snapshot().last_reply
    assert np.allclose(recorder.steps[-1].action[:4], 0.0)
    with PolicyServer(served, "127.0.0.1", port).running():
        deadline = time.monotonic() + 20
        while not low.connected and time.monotonic() < deadline:
            loop.step()
            time.sleep(0.05)
        assert low.connected and low.reconnects == 1
        for _ in range(3):
            loop.step()
        assert loop.snapshot().last_reply == "low level: reconnected, resuming"
        assert not recorder.steps[-1].paused
    low.close()
    assert [s.step for s in recorder.steps] == list(range(len(recorder.steps)))  # not a step lost


# ------------------------------------------------------------------------------------------- the CLI


def _start_hivla_serve(spec: str, *extra: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "serve", "--policy", spec, "--port", "0", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "hivla serve: ... on ws://127.0.0.1:PORT (...)"
    if "ws://127.0.0.1:" not in line:
        proc.kill()
        raise AssertionError(f"hivla serve did not start: {line!r} {proc.stderr.read()}")
    return proc, int(line.split("ws://127.0.0.1:")[1].split()[0])


def _run(tmp_path: Path, name: str, low_level: str, seeds_from: int, episodes: int, max_steps: int) -> tuple[dict, list]:
    from sessions.reader import read_session

    out = tmp_path / name
    code = hivla(["run", "--high-level", "oracle", "--low-level", low_level, "--family", FAMILY,
                  "--episodes", str(episodes), "--seed", str(seeds_from), "--max-steps", str(max_steps),
                  "--image-size", "64", "--json", str(out / "run.json"), "--out", str(out / "sessions"), "--quiet"])
    assert code == 0
    result = json.loads((out / "run.json").read_text())
    (session_dir,) = list((out / "sessions").iterdir())
    actions = [[s.action for s in ep.steps] for ep in read_session(session_dir).episodes]
    return result, actions


def _same_outcome(local: dict, remote: dict) -> None:
    keep = ("family", "seed", "success", "subtasks_completed", "subtasks_total", "steps", "reason")
    assert [{k: e[k] for k in keep} for e in remote["episodes_detail"]] == \
           [{k: e[k] for k in keep} for e in local["episodes_detail"]]
    assert remote["success_rate"] == local["success_rate"]


def _served_run(tmp_path, policy_spec: str, seeds_from: int, episodes: int, max_steps: int):
    """`hivla serve` the policy, `hivla run` over openpi against it, stop the server: (the run's JSON,
    its actions, the server process, its port)."""
    proc, port = _start_hivla_serve(policy_spec)
    try:
        remote, actions = _run(tmp_path, "remote", f"openpi:127.0.0.1:{port}", seeds_from, episodes, max_steps)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return remote, actions, proc, port


def test_hivla_serve_then_hivla_run_over_openpi_matches_the_local_spec(random_vla_checkpoint, tmp_path):
    remote, remote_actions, proc, port = _served_run(tmp_path, f"vla:{random_vla_checkpoint}", 10, 2, 30)
    local, local_actions = _run(tmp_path, "local", f"vla:{random_vla_checkpoint}", 10, 2, 30)
    _same_outcome(local, remote)
    assert remote["config"]["low_level"] == f"openpi:127.0.0.1:{port}"  # the run JSON names what acted
    for a, b in zip(remote_actions, local_actions, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-4)
    assert proc.returncode == 0
    assert "stopped after" in proc.stderr.read()


def test_hivla_serve_refuses_what_it_cannot_serve():
    assert hivla(["serve", "--policy", "expert", "--port", "0"]) == 2
    assert hivla(["serve", "--policy", "openpi:127.0.0.1:8000", "--port", "0"]) == 2
    assert hivla(["serve", "--policy", "vla:/nonexistent/checkpoint", "--port", "0"]) == 2


@pytest.mark.slow
def test_trained_policy_succeeds_the_same_over_openpi(tmp_path_factory, tmp_path):
    """With a policy that does something (test_vla's overfit recipe, about 20 s), the served run opens
    the drawer on the same seeds as the local one."""
    from agent.commands.datagen import record_episodes
    from agent.training.vla_trainer import VlaTrainSettings, train_vla

    data = tmp_path_factory.mktemp("serve_vla_data")
    record_episodes(str(data), 0, [10, 11, 12], "base", 0.0, 64, 40, [FAMILY])
    ckpt = tmp_path_factory.mktemp("serve_vla_ckpt")
    train_vla(VlaTrainSettings(data=[str(data)], out=str(ckpt), preset="tiny", steps=800, batch_size=32, lr=3e-3,
                               warmup_steps=20, ema_decay=0.9, eval_every=10**9, closed_loop_every=0,
                               held_out_fraction=0.0, vocab_size=600, overrides={"random_shift_pad": 0}))
    remote, _, _, _ = _served_run(tmp_path, f"vla:{ckpt}", 10, 3, 60)
    local, _ = _run(tmp_path, "local", f"vla:{ckpt}", 10, 3, 60)
    _same_outcome(local, remote)
    assert remote["mean_subtasks_completed"] > 0  # it did open the drawer somewhere


def test_a_pi05_checkpoint_is_served_with_its_own_shapes(tmp_path):
    from policies.pi05.configuration import make_config
    from policies.pi05.modeling import Pi05Model
    from policies.pi05.policy import load_pi05, save_checkpoint
    from policies.pi05.processor import NormStats, train_tokenizer

    tok = train_tokenizer(["pick up the red block", "open the drawer"] * 3, vocab_size=700)
    cfg = make_config("tiny", vocab_size=tok.get_vocab_size())
    rng = np.random.default_rng(0)
    stats = NormStats.from_data(rng.normal(size=(64, cfg.state_dim)), rng.normal(size=(64, cfg.action_dim)))
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "pi05", Pi05Model(cfg).eval(), tok, stats)
    srv = PolicyServer(ServedPolicy(load_pi05(tmp_path / "pi05"), "pi05:test"), "127.0.0.1", 0)
    with srv.running():
        low = make_low_level(f"openpi:127.0.0.1:{srv.port}")
        assert low.metadata["chunk_size"] == low.metadata["n_action_steps"] == cfg.action_horizon
        assert low.metadata["image_shape"] == [cfg.image_size, cfg.image_size, 3]
        chunk = low.act(_obs(size=128), "open the drawer")
        assert chunk.shape == (cfg.action_horizon, 5) and np.isfinite(chunk).all()
        low.close()
