"""`hivla serve`: a learned low level over openpi's websocket protocol.

    hivla serve --policy vla:policies/checkpoints/vla [--host 127.0.0.1] [--port 8000] [--api-key KEY]

Any openpi client (openpi-client 0.1.2's WebsocketClientPolicy, or `hivla run --low-level
openpi:HOST:PORT`) connects, reads the metadata frame (observation keys, image shape, state and action
dimensions, chunk length) and sends one observation per request. GET /healthz answers "OK".
Ctrl-C or SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import os
import sys

from agent.commands.devices import add_device_arguments, device_problem
from agent.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", metavar="SPEC", default=None,
                        help="learned low level to serve: vla:PATH | pi05:PATH (default: the shipped VLA)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Api-Key KEY' (default: $HIVLA_API_KEY, else none)")
    parser.add_argument("--max-frame-mb", type=float, default=16.0, help="largest request frame accepted (default 16)")
    add_device_arguments(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")


def resolve_policy_spec(spec: str | None) -> str:
    """The spec to serve: a learned low level; omitted means the shipped VLA."""
    from agent.specs import SHIPPED_VLA, default_low_level_spec

    spec = spec or default_low_level_spec()
    kind = spec.partition(":")[0].strip().lower()
    if kind in ("expert", "oracle"):
        if (SHIPPED_VLA / "model.safetensors").is_file() and spec == default_low_level_spec():
            return f"vla:{SHIPPED_VLA}"
        raise UserError(f"'{spec}' reads the simulator's privileged state and cannot be served; "
                        f"pass --policy vla:PATH or pi05:PATH (no VLA is shipped in {SHIPPED_VLA} yet)")
    if kind == "openpi":
        raise UserError("'openpi:' is a client of another server; serve a checkpoint with --policy vla:PATH or pi05:PATH")
    if kind not in ("vla", "pi05"):
        raise UserError(f"cannot serve {spec!r}; pass --policy vla:PATH or pi05:PATH")
    return spec


def main(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {args.port}")
    if args.max_frame_mb <= 0:
        raise UserError(f"--max-frame-mb must be positive, got {args.max_frame_mb}")
    problem = device_problem(args.device)
    if problem:
        raise UserError(problem)
    spec = resolve_policy_spec(args.policy)

    import asyncio
    import signal

    from agent.specs import describe_spec, make_low_level
    from policies.openpi.server import PolicyServer, ServedPolicy

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    low = make_low_level(spec, device=args.device, dtype=args.dtype)
    served = ServedPolicy(low.policy, spec=spec)
    server = PolicyServer(served, args.host, args.port, api_key=args.api_key or os.environ.get("HIVLA_API_KEY"),
                          max_frame_bytes=int(args.max_frame_mb * 2**20))

    def ready(port: int) -> None:
        meta = served.metadata
        print(f"hivla serve: {describe_spec(spec)} on ws://{args.host}:{port} "
              f"(cameras {meta['cameras']}, image {meta['image_shape']}, state {meta['state_dim']}, "
              f"actions {meta['chunk_size']}x{meta['action_dim']}{', API key required' if server.api_key else ''})",
              flush=True)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await server.serve_forever(stop, on_ready=ready)

    try:
        asyncio.run(run())
    except OSError as err:  # the port is taken, the address is not this machine's, ...
        raise UserError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from err
    print(f"hivla serve: stopped after {server.requests_served} requests "
          f"({server.requests_refused} refused)", file=sys.stderr, flush=True)
    return 0
