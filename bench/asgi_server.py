"""xia-broadcast's ASGI app (``create_app``) served by uvicorn: the usual Python way to serve it, as a target.

    .venv/bin/python bench/asgi_server.py --config FILE --port PORT

The same config file as the native server's (``xia-broadcast serve --config FILE``), read by the same
``load_settings``, so both serve the same classes, keys and settings. One uvicorn worker, in this process (its
pid is the server's), with what ``pip install uvicorn`` gives: no ``uvloop`` and no ``httptools`` (those come
with ``uvicorn[standard]``), so uvicorn picks the ``asyncio`` loop, ``h11`` for HTTP and, as its ``websockets``
protocol, its default implementation over the ``websockets`` package (``websockets-sansio`` in uvicorn 0.55).
Every other uvicorn option keeps its default (backlog 2048, ``--timeout-keep-alive 5``, pings every 20 s,
``permessage-deflate`` offered: the load generator does not ask for it) except the log level, which follows
the config's ``log_level`` as the native server's does (WARNING in the benchmark: no access log line per
request). ``--loop``, ``--http`` and ``--ws`` override uvicorn's choices (e.g. ``--loop uvloop --http
httptools`` once ``uvicorn[standard]`` is installed); the benchmark does not pass them.
"""

from __future__ import annotations

import argparse

import uvicorn

from xia_broadcast.server import create_app, load_settings
from xia_broadcast.server.logs import setup_logging


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--config", required=True, help="the TOML config file, as for `xia-broadcast serve`")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--loop", default="auto", help="uvicorn --loop (default auto: uvloop if installed)")
    ap.add_argument("--http", default="auto", help="uvicorn --http (default auto: httptools if installed)")
    ap.add_argument("--ws", default="auto", help="uvicorn --ws (default auto: its websockets implementation)")
    args = ap.parse_args()
    settings = load_settings(args.config)
    setup_logging(settings.log_format, settings.log_level)
    uvicorn.run(create_app(settings), host="127.0.0.1", port=args.port, workers=1, lifespan="on",
                loop=args.loop, http=args.http, ws=args.ws, log_level=settings.log_level.lower())


if __name__ == "__main__":
    main()
