"""The xia-broadcast server: configuration, authentication, the handshake, publishing, operations.

Transports live beside each other: the standalone server and :mod:`.asgi` (a Starlette application to
mount into an existing app). Both use the same :class:`~.service.Service` and the same HTTP endpoint table
(:mod:`.endpoints`). The standalone server is split by concern: :mod:`.native` (listening socket, accept
loop, file descriptors, lifecycle), :mod:`.http` (HTTP/1.1 until the upgrade: routing, bodies, limits),
:mod:`.upgrade` (the upgrade's checks, no I/O), :mod:`.connection` (a WebSocket after the upgrade: frames
in, handshake, close, keepalive) and :mod:`.writer` (outbound frames, batching, bounded buffers).

The names an application uses: :func:`create_app` (the ASGI app), :class:`NativeServer` (the standalone
server), :class:`Settings` and :func:`load_settings` (defaults, then a TOML file, the environment, overrides).
"""

from .asgi import create_app
from .config import ConfigError, Settings, load_settings
from .native import NativeServer

__all__ = ["ConfigError", "NativeServer", "Settings", "create_app", "load_settings"]
