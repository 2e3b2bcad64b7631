"""A remote openpi policy server as a hivla LowLevelPolicy: the `openpi:HOST:PORT[:ROBOT]` spec.

    low = OpenpiLowLevel("127.0.0.1", 8000, robot="hivla")   # or "libero", "droid", or a mapping .toml
    chunk = low.act(obs, "pick up the red block")             # float32 [H, 5], the subtask sent as the prompt

A robot mapping (policies/openpi/robots/*.toml) says which request keys carry which camera and which
state dimensions, the image size, and how the server's action dimensions become hivla's
[dx, dy, dz, dyaw, grip]. Against a hivla server the mapping is checked against its metadata frame.

A lost connection raises `RemoteUnavailable` (a ConnectionError) from `act` at once, never blocks: the
control loop holds the robot as if paused and keeps recording, while a background thread reconnects.
"""

from __future__ import annotations

import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from policies.openpi.msgpack_numpy import WireError, packb, unpackb
from policies.types import ActionChunk, Observation

ROBOTS = Path(__file__).resolve().parent / "robots"
HIVLA_ACTION_DIM = 5


class RemoteUnavailable(ConnectionError):
    """The policy server cannot be reached right now."""


class OpenpiServerError(RuntimeError):
    """The server answered a request with an error (a text frame) instead of actions."""


# ------------------------------------------------------------------------------------------------ mapping


@dataclass(frozen=True)
class RobotMapping:
    name: str
    images: dict[str, str]  # request key -> hivla camera
    state: dict[str, list[int]]  # request key -> hivla state dims (-1: send 0)
    state_scale: dict[str, list[float]]
    prompt_key: str
    image_size: int  # 0: from the server's metadata
    action_key: str
    action_indices: list[int]  # per hivla action dim: the server's dim (-1: 0)
    action_scale: list[float]
    action_offset: list[float]
    execute_steps: int  # 0: the metadata's n_action_steps, else the whole chunk

    @classmethod
    def load(cls, robot: str | Path) -> "RobotMapping":
        """A shipped mapping by name (hivla, libero, droid) or a path to a mapping .toml."""
        path = Path(robot)
        if path.suffix != ".toml":
            path = ROBOTS / f"{robot}.toml"
            if not path.is_file():
                shipped = sorted(p.stem for p in ROBOTS.glob("*.toml"))
                raise ValueError(f"no robot mapping {robot!r}; use one of {shipped} or a path to a .toml")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ValueError(f"cannot read robot mapping {path}: {err}") from err
        try:
            actions = data["actions"]
            indices = [int(i) for i in actions["indices"]]
            mapping = cls(
                name=str(data.get("name", path.stem)),
                images={str(k): str(v) for k, v in data["images"].items()},
                state={str(k): [int(i) for i in v] for k, v in data["state"].items()},
                state_scale={str(k): [float(x) for x in v] for k, v in data.get("state_scale", {}).items()},
                prompt_key=str(data.get("prompt_key", "prompt")),
                image_size=int(data.get("image_size", 0)),
                action_key=str(actions.get("key", "actions")),
                action_indices=indices,
                action_scale=[float(x) for x in actions.get("scale", [1.0] * len(indices))],
                action_offset=[float(x) for x in actions.get("offset", [0.0] * len(indices))],
                execute_steps=int(actions.get("execute_steps", 0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"robot mapping {path}: needs [images], [state] and [actions] indices ({err!r})") from err
        if not (len(mapping.action_indices) == len(mapping.action_scale) == len(mapping.action_offset) == HIVLA_ACTION_DIM):
            raise ValueError(f"robot mapping {path}: [actions] indices, scale and offset need {HIVLA_ACTION_DIM} entries each")
        for key, scale in mapping.state_scale.items():
            if len(scale) != len(mapping.state.get(key, [])):
                raise ValueError(f"robot mapping {path}: state_scale {key!r} needs one entry per state index")
        return mapping

    def check_against(self, metadata: dict) -> None:
        """A server that names its observation keys (hivla's does) must be sent exactly those."""
        keys = metadata.get("observation_keys") if isinstance(metadata, dict) else None
        if not isinstance(keys, dict):
            return
        wanted = set(keys.get("images", {}).values()) | {keys.get("state"), keys.get("prompt")}
        sent = set(self.images) | set(self.state) | {self.prompt_key}
        if wanted - sent:
            raise ValueError(f"the server expects keys {sorted(map(str, wanted))} but robot mapping {self.name!r} "
                             f"sends {sorted(sent)}; name a mapping that matches (openpi:HOST:PORT:hivla)")
        state_dim = metadata.get("state_dim")
        if state_dim is not None and keys.get("state") in self.state and len(self.state[keys["state"]]) != state_dim:
            raise ValueError(f"the server expects a {state_dim}-D state; robot mapping {self.name!r} "
                             f"sends {len(self.state[keys['state']])} dims")

    def request(self, obs: Observation, prompt: str, image_size: int) -> dict[str, Any]:
        from policies.pi05.processor import resize_image

        out: dict[str, Any] = {}
        for key, camera in self.images.items():
            if camera not in obs.images:
                raise ValueError(f"robot mapping {self.name!r} sends camera {camera!r}; the robot has {sorted(obs.images)}")
            img = obs.images[camera]
            out[key] = np.ascontiguousarray(resize_image(img, image_size) if image_size else img, dtype=np.uint8)
        state = np.asarray(obs.state, np.float32)
        for key, dims in self.state.items():
            values = np.array([state[i] if i >= 0 else 0.0 for i in dims], np.float32)
            if key in self.state_scale:
                values *= np.asarray(self.state_scale[key], np.float32)
            out[key] = values
        out[self.prompt_key] = prompt
        return out

    def actions(self, response: Any) -> np.ndarray:
        """The server's action chunk float [H, D] -> hivla's float32 [H, 5]."""
        if not isinstance(response, dict) or self.action_key not in response:
            got = sorted(map(str, response)) if isinstance(response, dict) else type(response).__name__
            raise OpenpiServerError(f"the server's reply has no {self.action_key!r} (got {got})")
        raw = np.asarray(response[self.action_key], np.float32)
        if raw.ndim == 1:
            raw = raw[None]
        if raw.ndim != 2 or len(raw) == 0 or max(self.action_indices) >= raw.shape[1]:
            raise OpenpiServerError(f"the server's {self.action_key!r} has shape {list(raw.shape)}; robot mapping "
                                    f"{self.name!r} reads dims {self.action_indices}")
        chunk = np.zeros((len(raw), HIVLA_ACTION_DIM), np.float32)
        for j, i in enumerate(self.action_indices):
            if i >= 0:
                chunk[:, j] = raw[:, i]
        return chunk * np.asarray(self.action_scale, np.float32) + np.asarray(self.action_offset, np.float32)


def parse_openpi_spec(arg: str) -> tuple[str, int, str]:
    """'HOST:PORT[:ROBOT]' -> (host, port, robot); the robot defaults to 'hivla'."""
    parts = arg.split(":")
    if len(parts) < 2 or not parts[0]:
        raise ValueError(f"'openpi:{arg}' needs a host and a port: openpi:HOST:PORT[:ROBOT] (e.g. openpi:127.0.0.1:8000)")
    host, port_text, robot = parts[0], parts[1], ":".join(parts[2:]) or "hivla"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"'openpi:{arg}': port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"'openpi:{arg}': port must be 1..65535")
    return host, port, robot


# ------------------------------------------------------------------------------------------------ client


class OpenpiLowLevel:
    """LowLevelPolicy over openpi's websocket protocol, reconnecting on its own after a lost connection."""

    def __init__(self, host: str, port: int, robot: str | Path = "hivla", *, api_key: str | None = None,
                 open_timeout_s: float = 5.0, recv_timeout_s: float = 60.0, retry_s: float = 0.5):
        self.uri = f"ws://{host}:{port}"
        self.mapping = RobotMapping.load(robot)
        self.api_key = api_key
        self.open_timeout_s = open_timeout_s
        self.recv_timeout_s = recv_timeout_s
        self.retry_s = retry_s
        self.metadata: dict = {}
        self.reconnects = 0
        self._conn: ClientConnection | None = None
        self._lost_at: float | None = None
        self._lost_why = ""
        self._attempts = 0
        self._closed = False
        self._lock = threading.Lock()
        self._reconnector: threading.Thread | None = None
        self._conn = self._open()  # the first connection must work: a wrong address is the user's to fix

    # -- connection ------------------------------------------------------------------------------------

    def _open(self) -> ClientConnection:
        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        try:
            conn = connect(self.uri, compression=None, max_size=None, open_timeout=self.open_timeout_s,
                           additional_headers=headers)
        except InvalidStatus as err:
            raise RemoteUnavailable(f"{self.uri} refused the connection ({err}); an API key server needs "
                                    f"$HIVLA_OPENPI_API_KEY") from err
        except (OSError, TimeoutError, InvalidHandshake) as err:
            raise RemoteUnavailable(f"cannot reach an openpi server at {self.uri} ({err}); start one with "
                                    f"`hivla serve --policy vla:PATH --port PORT`") from err
        try:
            metadata = unpackb(conn.recv(timeout=self.open_timeout_s))
        except (ConnectionClosed, TimeoutError, WireError) as err:
            conn.close()
            raise RemoteUnavailable(f"{self.uri} sent no metadata frame ({err})") from err
        self.metadata = metadata if isinstance(metadata, dict) else {}
        self.mapping.check_against(self.metadata)
        return conn

    def _lost(self, why: str) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:  # already broken; nothing to save
                    pass
            self._conn = None
            if self._lost_at is None:
                self._lost_at, self._lost_why, self._attempts = time.monotonic(), why, 0
            if self._reconnector is None or not self._reconnector.is_alive():
                self._reconnector = threading.Thread(target=self._reconnect, name="openpi-reconnect", daemon=True)
                self._reconnector.start()

    def _reconnect(self) -> None:
        while not self._closed:
            self._attempts += 1
            try:
                conn = self._open()
            except (RemoteUnavailable, ValueError):  # not back yet (or back with another policy): retry
                time.sleep(self.retry_s)
                continue
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._conn, self._lost_at = conn, None
                self.reconnects += 1
            return

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def _unavailable(self) -> RemoteUnavailable:
        since = time.monotonic() - (self._lost_at or time.monotonic())
        return RemoteUnavailable(f"lost the openpi server at {self.uri} {since:.0f} s ago ({self._lost_why}); "
                                 f"holding still and reconnecting (attempt {self._attempts})")

    # -- LowLevelPolicy ----------------------------------------------------------------------------------

    def reset(self) -> None:
        pass

    def infer(self, request: dict) -> dict:
        """One openpi request -> the server's reply dict. Raises RemoteUnavailable on a lost connection."""
        conn = self._conn
        if conn is None:
            raise self._unavailable()
        try:
            conn.send(packb(request))
            reply = conn.recv(timeout=self.recv_timeout_s)
        except (ConnectionClosed, OSError, TimeoutError) as err:
            self._lost(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)
            raise self._unavailable() from err
        if isinstance(reply, str):  # openpi's servers answer a failed request with a text frame and close
            self._lost("the server closed the connection after an error")
            raise OpenpiServerError(f"the openpi server at {self.uri} refused the request: {reply.strip()}")
        return unpackb(reply)

    def act(self, obs: Observation, subtask: str) -> ActionChunk:
        image_size = self.mapping.image_size or int((self.metadata.get("image_shape") or [0])[0])
        chunk = self.mapping.actions(self.infer(self.mapping.request(obs, subtask, image_size)))
        execute = self.mapping.execute_steps or int(self.metadata.get("n_action_steps") or len(chunk))
        return np.ascontiguousarray(chunk[:execute])

    def close(self) -> None:
        self._closed = True
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
