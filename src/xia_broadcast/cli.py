"""The ``xia-broadcast`` command.

``xia-broadcast serve [--host H] [--port P] [--config FILE] [--demo]`` runs the standalone server on the
embedded in-memory default. Exit codes: 0 after a graceful shutdown (SIGINT/SIGTERM), 2 for a bad
configuration, 1 when the server cannot start (e.g. the port is taken).

``xia-broadcast listen URL --class C ...`` and ``xia-broadcast publish URL ...`` are clients of a server;
their options and exit codes are in :mod:`xia_broadcast.client.commands`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from .client.commands import add_parsers as add_client_parsers
from .server.config import ConfigError, Settings, load_settings
from .server.demo import ORDER_SCHEMA, run_demo
from .server.logs import setup_logging
from .server.native import NativeServer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xia-broadcast", description=__doc__.split("\n")[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the server (embedded in-memory default)")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port to listen on (default 8765)")
    s.add_argument("--config", help="TOML config file (classes, auth, limits); also $XIA_BROADCAST_CONFIG")
    s.add_argument("--redis", metavar="URL", help="cluster mode: carry every change through the Redis server at URL "
                                                  "(e.g. redis://127.0.0.1:6379/0); also $XIA_BROADCAST_REDIS_URL")
    s.add_argument("--demo", action="store_true", default=None,
                   help="add the demo class Order and publish a stream of changes of it")
    add_client_parsers(sub)
    return p


async def serve(settings: Settings) -> None:
    """Run a server until SIGINT or SIGTERM, then shut down gracefully."""
    if settings.demo:
        settings.classes.setdefault("Order", ORDER_SCHEMA)
    server = NativeServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    demo = loop.create_task(run_demo(server.broadcaster, settings.demo_rate)) if settings.demo else None
    classes = ", ".join(sorted(server.broadcaster.document_classes)) or "none declared"
    auth = "API keys/JWT" if settings.authenticated else "public (no authentication)"
    journal = f"Redis Streams at {settings.redis_url}" if settings.redis_url else "in memory"
    print(f"xia-broadcast listening on {server.url}  (classes: {classes}; auth: {auth}; journal: {journal})",
          flush=True)
    print(f"  publish: POST http://{settings.host}:{server.port}/publish   "
          f"health: /healthz  ready: /readyz  metrics: /metrics", flush=True)
    if settings.demo:
        print(f'  demo: send {{"Order": {{}}}} as first message to receive Order changes '
              f"({settings.demo_rate:g}/s)", flush=True)
    await stop.wait()
    if demo is not None:
        demo.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await demo
    await server.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "serve":
        return int(args.run(args))
    try:
        settings = load_settings(args.config, host=args.host, port=args.port, demo=args.demo,
                                 redis_url=args.redis)
    except ConfigError as exc:
        print(f"xia-broadcast: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format, settings.log_level)
    try:
        asyncio.run(serve(settings))
    except OSError as exc:
        print(f"xia-broadcast: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
