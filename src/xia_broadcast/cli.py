"""The ``xia-broadcast`` command.

``xia-broadcast serve [--host H] [--port P] [--config FILE] [--data DIR] [--redis URL] [--demo]`` runs the
standalone server, on the embedded in-memory journal by default (``--data DIR``: durable, in a SQLite file).
Exit codes: 0 after a graceful shutdown (SIGINT/SIGTERM), 2 for a bad configuration or a data directory that
cannot be used (a corrupt or foreign journal file, another server holding it), 1 when the server cannot
start otherwise (e.g. the port is taken).

``xia-broadcast listen URL --class C ...`` and ``xia-broadcast publish URL ...`` are clients of a server;
their options and exit codes are in :mod:`xia_broadcast.client.commands`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import signal
import sys
from typing import Any

from . import __version__
from .client.commands import add_parsers as add_client_parsers
from .journal.sqlite import JournalFileError
from .server.config import DECLARATIONS, ConfigError, Settings, default_text, load_settings
from .server.demo import ORDER_SCHEMA, run_demo
from .server.logs import setup_logging
from .server.native import NativeServer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xia-broadcast", description="Push every change of typed documents to the "
                                "WebSocket clients allowed to see it: serve, listen, publish.")
    p.add_argument("--version", action="version", version=f"xia-broadcast {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the server (embedded in-memory default)")
    s.add_argument("--config", help="TOML config file (classes, auth, limits); also $XIA_BROADCAST_CONFIG")
    _add_setting_flags(s)
    add_client_parsers(sub)
    return p


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting declared with one (``setting(..., flag=...)`` in :mod:`.server.config`): its help
    is the declaration's doc line, default and environment variable. A flag not given is None (not set)."""
    for decl in DECLARATIONS:
        if decl.flag is None:
            continue
        notes = [f"also ${decl.env_name}"]
        if decl.default is not None and not isinstance(decl.default, bool):
            unit = f" {decl.unit}" if decl.unit else ""
            notes.insert(0, f"default {default_text(decl, toml=False)}{unit}")
        help_text = f"{decl.doc} ({'; '.join(notes)})".replace("%", "%%")
        if decl.base_type is bool:
            parser.add_argument(decl.flag, dest=decl.name, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(decl.flag, dest=decl.name, type=decl.base_type, metavar=decl.name.upper(),
                                help=help_text)


def setting_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the ``serve`` flags give (None for a flag not given), by attribute name."""
    return {decl.name: getattr(args, decl.name) for decl in DECLARATIONS if decl.flag is not None}


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
    demo = loop.create_task(run_demo(server.service, settings.demo_rate)) if settings.demo else None
    classes = ", ".join(sorted(server.service.hub.schemas)) or "none declared"
    auth = "API keys/JWT" if settings.authenticated else "public (no authentication)"
    print(f"xia-broadcast listening on {server.url}  (classes: {classes}; auth: {auth})", flush=True)
    print(f"  journal: {journal_text(settings)}", flush=True)
    print(f"  publish: POST http://{settings.host}:{server.port}/publish   "
          f"health: /healthz  ready: /readyz  metrics: /metrics", flush=True)
    if settings.demo:
        print(f"  demo: open http://{settings.host}:{server.port}/demo in a browser, or send "
              f'{{"Order": {{}}}} as first message to receive Order changes ({settings.demo_rate:g}/s)', flush=True)
    await stop.wait()
    if demo is not None:
        demo.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await demo
    await server.shutdown()


def journal_text(settings: Settings) -> str:
    """Which journal the server keeps, and what a restart of this process loses."""
    if settings.redis_url:
        return f"Redis Streams at {settings.redis_url} (a restart of this node loses nothing Redis holds)"
    if settings.data:
        return (f"SQLite in {settings.data}, durability {settings.journal_durability} (a restart loses nothing "
                "acknowledged; clients resume where they were)")
    return ("in memory: a restart loses every change and document and starts a new epoch (resuming clients "
            "are told history_gone, snapshot clients reset); --data DIR keeps them")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "serve":
        return int(args.run(args))
    try:
        settings = load_settings(args.config, **setting_overrides(args))
    except ConfigError as exc:
        print(f"xia-broadcast: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format, settings.log_level)
    try:
        asyncio.run(serve(settings))
    except JournalFileError as exc:
        print(f"xia-broadcast: journal: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f" on {settings.host}:{settings.port}" if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL) else ""
        hint = " (another process listens there: choose another with --port)" if exc.errno == errno.EADDRINUSE else ""
        print(f"xia-broadcast: cannot start{where}: {exc.strerror or exc}{hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
