"""A hivla learned low level served over openpi's websocket protocol (wire-compatible with openpi-client 0.1.2).

    connect      -> the server sends one msgpack frame: the metadata (observation keys, image size, state
                    and action dimensions, chunk length), so a client knows what to send
    each request -> one binary msgpack-numpy frame {key: array | str} -> one frame
                    {"actions": float32 [chunk_size, A], "server_timing": {...}, "policy_timing": {...}} (ms)
    a bad frame  -> one text frame naming the problem, then the connection is closed (1007 for a malformed
                    request, 1009 for an oversized frame, 1011 for a failure inside the policy); other
                    connections are not affected
    GET /healthz -> 200 "OK"

Binds 127.0.0.1 unless told otherwise. With an API key, the websocket upgrade needs the header
`Authorization: Api-Key KEY` (what openpi-client sends for its `api_key`). Never pickle.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any, Iterator

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from policies.openpi.msgpack_numpy import WireError, packb, unpackb
from policies.types import Observation

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 16 * 2**20  # two 1024-px cameras fit in about 6 MB
MAX_IMAGE_SIDE = 4096


class BadRequest(ValueError):
    """A well-formed msgpack frame that is not a request this policy can answer."""


def image_key(camera: str) -> str:
    return f"observation/{camera}_image"


STATE_KEY, PROMPT_KEY, ACTIONS_KEY = "observation/state", "prompt", "actions"


class ServedPolicy:
    """A learned hivla policy (`vla:` or `pi05:`; anything with `.cfg` and `predict_action_chunk(obs, subtask)`)
    behind openpi's request and response dicts."""

    def __init__(self, policy: Any, spec: str = ""):
        cfg = policy.cfg
        self.policy = policy
        self.spec = spec
        self.cameras = tuple(cfg.cameras)
        self.image_size = int(cfg.image_size)
        self.state_dim = int(cfg.state_dim)
        self.action_dim = int(cfg.action_dim)
        self.chunk_size = int(getattr(cfg, "chunk_size", None) or cfg.action_horizon)
        self.n_action_steps = int(getattr(cfg, "n_action_steps", None) or self.chunk_size)

    @property
    def metadata(self) -> dict:
        return {
            "server": "hivla",
            "protocol_version": PROTOCOL_VERSION,
            "policy": self.spec,
            "observation_keys": {"images": {cam: image_key(cam) for cam in self.cameras},
                                 "state": STATE_KEY, "prompt": PROMPT_KEY},
            "cameras": list(self.cameras),
            "image_shape": [self.image_size, self.image_size, 3],  # what the model sees; any size is resized
            "image_dtype": "uint8",
            "state_dim": self.state_dim,
            "state_dtype": "float32",
            "action_key": ACTIONS_KEY,
            "action_dim": self.action_dim,
            "chunk_size": self.chunk_size,
            "n_action_steps": self.n_action_steps,  # how many of a chunk hivla executes before asking again
            "action_space": "[dx, dy, dz, dyaw, grip] end-effector deltas (grip <= 0 opens)",
        }

    def observation(self, request: Any) -> Observation:
        """Check a decoded request against the metadata; every problem is named in one BadRequest."""
        if not isinstance(request, dict):
            raise BadRequest(f"a request is a map of observation keys, got {type(request).__name__}")
        required = [image_key(cam) for cam in self.cameras] + [STATE_KEY, PROMPT_KEY]
        missing = [k for k in required if k not in request]
        if missing:
            got = sorted(str(k) for k in request)[:12]
            raise BadRequest(f"missing keys {missing} (the request needs {required}; got {got})")
        images = {}
        for cam in self.cameras:
            img = request[image_key(cam)]
            if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3):
                raise BadRequest(f"{image_key(cam)} must be uint8 [H, W, 3], got {_describe(img)}")
            if not (1 <= img.shape[0] <= MAX_IMAGE_SIDE and 1 <= img.shape[1] <= MAX_IMAGE_SIDE):
                raise BadRequest(f"{image_key(cam)} has size {img.shape[:2]}; each side must be 1..{MAX_IMAGE_SIDE}")
            images[cam] = img
        images.setdefault("front", images[self.cameras[0]])  # Observation needs both names
        images.setdefault("wrist", images[self.cameras[-1]])
        state = request[STATE_KEY]
        if not (isinstance(state, np.ndarray) and state.dtype.kind == "f" and state.shape == (self.state_dim,)):
            raise BadRequest(f"{STATE_KEY} must be float [{self.state_dim}], got {_describe(state)}")
        if not np.all(np.isfinite(state)):
            raise BadRequest(f"{STATE_KEY} holds NaN or infinity")
        prompt = request[PROMPT_KEY]
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadRequest(f"{PROMPT_KEY} must be a non-empty string (the subtask), got {_describe(prompt)}")
        return Observation(images=images, state=state.astype(np.float32), task=prompt, time=0.0)

    def infer(self, request: Any) -> dict:
        obs = self.observation(request)
        started = time.perf_counter()
        chunk = np.asarray(self.policy.predict_action_chunk(obs, obs.task), dtype=np.float32)
        return {ACTIONS_KEY: np.ascontiguousarray(chunk),
                "policy_timing": {"infer_ms": (time.perf_counter() - started) * 1000.0}}


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {list(value.shape)}"
    return type(value).__name__


def _close_reason(text: str) -> str:
    """A close frame's reason holds at most 123 bytes."""
    raw = text.encode("utf-8")[:120]
    return raw.decode("utf-8", errors="ignore")


class PolicyServer:
    """The websocket server. `serve_forever` runs in an asyncio loop; `running` runs it on a thread."""

    def __init__(self, policy: ServedPolicy, host: str = "127.0.0.1", port: int = 8000, *,
                 api_key: str | None = None, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        self.policy = policy
        self.host = host
        self.port = port
        self.api_key = api_key or None
        self.max_frame_bytes = max_frame_bytes
        self.requests_served = 0
        self.requests_refused = 0
        # one inference at a time, off the event loop: pings, health checks and other clients stay answered
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hivla-infer")

    # -- HTTP side: /healthz and the API key --------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request):
        if request.path.split("?")[0] == "/healthz":
            return connection.respond(HTTPStatus.OK, "OK\n")
        if self.api_key is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {self.api_key}".encode()):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong API key "
                                          "(send the header 'Authorization: Api-Key KEY')\n")
        return None

    # -- one connection --------------------------------------------------------------------------------

    async def _refuse(self, ws: ServerConnection, code: CloseCode, message: str) -> None:
        self.requests_refused += 1
        with contextlib.suppress(ConnectionClosed):
            await ws.send(message)
            await ws.close(code, _close_reason(message))

    async def _handler(self, ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        await ws.send(packb(self.policy.metadata))
        prev_total_ms = None
        while True:
            try:
                message = await ws.recv()
            except ConnectionClosed:
                return
            started = time.perf_counter()
            try:
                request = unpackb(message)
                response = await loop.run_in_executor(self._executor, self.policy.infer, request)
            except (WireError, BadRequest) as err:
                await self._refuse(ws, CloseCode.INVALID_DATA, f"hivla serve: bad request: {err}")
                return
            except Exception:  # a failure inside the policy: openpi sends the traceback as text
                await self._refuse(ws, CloseCode.INTERNAL_ERROR,
                                   f"hivla serve: the policy failed on this request:\n{traceback.format_exc()}")
                return
            timing = {"infer_ms": (time.perf_counter() - started) * 1000.0}
            if prev_total_ms is not None:
                timing["prev_total_ms"] = prev_total_ms
            response["server_timing"] = timing
            try:
                await ws.send(packb(response))
            except ConnectionClosed:
                return
            self.requests_served += 1
            prev_total_ms = (time.perf_counter() - started) * 1000.0

    # -- running -----------------------------------------------------------------------------------------

    async def serve_forever(self, stop: asyncio.Event | None = None, on_ready=None) -> None:
        """Serve until `stop` is set (forever without one). `on_ready(port)` is called once listening."""
        async with serve(self._handler, self.host, self.port, compression=None, max_size=self.max_frame_bytes,
                         process_request=self._process_request) as server:
            self.port = server.sockets[0].getsockname()[1]  # the real port when 0 asked for a free one
            if on_ready is not None:
                on_ready(self.port)
            await (stop.wait() if stop is not None else asyncio.Future())

    @contextlib.contextmanager
    def running(self, timeout: float = 10.0) -> Iterator["PolicyServer"]:
        """Serve on a background thread for the duration of a `with` block (tests, benchmarks)."""
        ready = threading.Event()
        state: dict = {}

        def main() -> None:
            async def run() -> None:
                state["loop"], state["stop"] = asyncio.get_running_loop(), asyncio.Event()
                await self.serve_forever(state["stop"], on_ready=lambda port: ready.set())
            try:
                asyncio.run(run())
            except BaseException as err:  # reported to the caller instead of dying silently
                state["error"] = err
                ready.set()

        thread = threading.Thread(target=main, name="hivla-serve", daemon=True)
        thread.start()
        if not ready.wait(timeout) or "error" in state:
            raise RuntimeError(f"the policy server did not start: {state.get('error', 'timed out')}")
        try:
            yield self
        finally:
            state["loop"].call_soon_threadsafe(state["stop"].set)
            thread.join(timeout)
