"""Static files of the server: the browser client at ``/client.js``, the live demo page at ``/demo``.

The files ship in the package (``server/static/``) and are read once, on first use. ``/demo`` exists only on
a server started with the demo (``serve --demo``); the page connects to the server's own WebSocket path.
"""

from __future__ import annotations

import functools
from importlib import resources

from .config import Settings

JS = "text/javascript; charset=utf-8"
HTML = "text/html; charset=utf-8"
#: URL path -> (file under static/, content type, served only with the demo)
FILES: dict[str, tuple[str, str, bool]] = {
    "/client.js": ("client.js", JS, False),
    "/demo": ("demo.html", HTML, True),
}
#: replaced in demo.html by the server's WebSocket path, relative to the page (``ws`` for ``/ws``)
WS_PATH_PLACEHOLDER = b"__XIA_WS_PATH__"


@functools.cache
def _read(name: str) -> bytes:
    return resources.files(__package__ or "xia_broadcast.server").joinpath("static", name).read_bytes()


@functools.cache
def _page(name: str, ws_path: str) -> bytes:
    return _read(name).replace(WS_PATH_PLACEHOLDER, ws_path.lstrip("/").encode())


def static_response(path: str, settings: Settings) -> tuple[str, bytes] | None:
    """``(content type, body)`` of the static file served at ``path``, or None when there is none."""
    entry = FILES.get(path)
    if entry is None:
        return None
    name, content_type, demo_only = entry
    if demo_only and not settings.demo:
        return None
    return content_type, _page(name, settings.path)
