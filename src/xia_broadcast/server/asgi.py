"""Embedding: a Starlette application to mount into an existing Starlette or FastAPI app.

    from fastapi import FastAPI
    from xia_broadcast.server.asgi import create_app
    from xia_broadcast.server.config import load_settings

    app = FastAPI()
    app.mount("/realtime", create_app(load_settings("broadcast.toml")))  # ws at /realtime/ws

It speaks the same protocol as the standalone server (handshake, close codes, ``POST /publish``,
``/healthz``, ``/readyz``, ``/metrics``) on the same core. One difference: on shutdown, an ASGI server
such as uvicorn closes the websockets itself (uvicorn: 1012) before the app's lifespan ends; for the
documented 1001 after a flush, call ``await app.state.shutdown()`` before stopping the ASGI server. The
inbound message size limit and keepalive pings are the ASGI server's (uvicorn: ``--ws-max-size``,
``--ws-ping-interval``), not ``max_message_size``/``ping_interval``.
Sending goes through the ASGI server, one
awaited ``send_text`` per message in each websocket's own task; the inbound size limit is the ASGI
server's (uvicorn: ``--ws-max-size``). The in-process publisher is ``app.state.broadcaster.publish(...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..broadcast import Broadcaster
from ..core.protocol import CLOSE_BAD_HANDSHAKE, CLOSE_GOING_AWAY, CLOSE_TOO_MANY_CONNECTIONS, Refusal
from ..fanout import Outgoing
from .auth import AuthError
from .config import Settings
from .metrics import CONTENT_TYPE
from .service import PublishError, Service, Session
from .static import FILES, static_response


class StarletteBroadcaster(Broadcaster):
    """The original API's transport hooks for Starlette websockets."""

    @classmethod
    async def accept(cls, websocket: Any) -> None:
        await websocket.accept()

    @classmethod
    async def send_message_async(cls, websocket: Any, message: str) -> None:
        await websocket.send_text(message)

    @classmethod
    def subscriber_is_connected(cls, websocket: Any) -> bool:
        return bool(websocket.application_state == WebSocketState.CONNECTED
                    and websocket.client_state == WebSocketState.CONNECTED)

    @classmethod
    async def close_async(cls, websocket: Any, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await websocket.close(code, reason)

    @classmethod
    async def send_batch_async(cls, websocket: Any, messages: list[Outgoing]) -> None:
        for out in messages:
            await websocket.send_text(out.text)


def create_app(settings: Settings | None = None, broadcaster: type[Broadcaster] | None = None) -> Starlette:
    """A Starlette app serving the WebSocket endpoint (``settings.path``) and the HTTP endpoints."""
    settings = settings or Settings()
    bc: type[Broadcaster] = broadcaster or type("AppBroadcaster", (StarletteBroadcaster,), {})
    service = Service(settings, bc)
    sockets: set[WebSocket] = set()

    async def ws_endpoint(websocket: WebSocket) -> None:
        await bc.accept(websocket)
        session: Session | None = None
        service.connection_count += 1
        sockets.add(websocket)
        try:
            if service.shutting_down:
                await bc.close_async(websocket, CLOSE_GOING_AWAY, "shutting down")
                return
            if service.connection_count > settings.max_connections:
                await bc.close_async(websocket, CLOSE_TOO_MANY_CONNECTIONS, "too many connections")
                return
            try:
                first = await asyncio.wait_for(websocket.receive(), settings.handshake_timeout)
            except TimeoutError:
                service.refusals += 1
                await bc.close_async(websocket, CLOSE_BAD_HANDSHAKE, "Need connection information")
                return
            if first["type"] == "websocket.disconnect":
                return
            message = first.get("text")
            if message is None:
                message = first.get("bytes") or b""
            try:
                session = await service.open_session(websocket, message, dict(websocket.headers))
            except Refusal as exc:
                service.refusals += 1
                await bc.close_async(websocket, exc.code, exc.reason)
                return

            def close(code: int, reason: str) -> None:
                service.refusals += 1
                bc._spawn(bc.close_async(websocket, code, reason))

            service.arm_expiry(websocket, session, close)
            while True:  # client messages: token refresh; anything else is ignored, as the original
                event = await websocket.receive()
                if event["type"] == "websocket.disconnect":
                    return
                try:
                    service.client_message(websocket, session, event.get("text") or event.get("bytes") or b"",
                                           close)
                except Refusal as exc:
                    close(exc.code, exc.reason)
        except WebSocketDisconnect:
            return
        finally:
            sockets.discard(websocket)
            service.connection_count -= 1
            service.close_session(websocket, session)

    async def healthz(_: Request) -> Response:
        return JSONResponse(service.health())

    async def readyz(_: Request) -> Response:
        ok = service.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(service.metrics_text(), media_type=CONTENT_TYPE)

    async def publish(request: Request) -> Response:
        try:
            body = await read_publish_body(request)
            seqs = service.publish_http(request.headers, body)
        except PublishError as exc:
            return Response(exc.body(), status_code=exc.status, media_type="application/json")
        return JSONResponse({"seqs": seqs})

    async def read_publish_body(request: Request) -> bytes:
        """The body, read only once the publisher key is checked and only up to ``max_publish_size``."""
        try:
            service.auth.publisher(request.headers)
        except AuthError as exc:
            raise PublishError(401, "unauthorized", str(exc)) from exc
        limit = settings.max_publish_size
        too_large = PublishError(413, "too_large", f"body over {limit} bytes")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)

    async def shutdown() -> None:
        """Flush what is queued, then close every websocket with 1001 (the app's lifespan calls this;
        a parent app that mounts this one calls ``app.state.shutdown()`` from its own lifespan)."""
        service.shutting_down = True
        await bc.flush(settings.shutdown_timeout)
        for ws in list(sockets):
            await bc.close_async(ws, CLOSE_GOING_AWAY, "shutting down")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await shutdown()

    service.started = True  # a mounted app's lifespan does not run: it is ready once built

    async def static(request: Request) -> Response:
        found = static_response("/" + request.url.path.rsplit("/", 1)[-1], settings)
        if found is None:
            raise HTTPException(404, f"no endpoint {request.url.path}")
        return Response(found[1], media_type=found[0])

    async def upgrade_required(_: Request) -> Response:
        return JSONResponse({"error": "upgrade_required", "message": "WebSocket endpoint"}, status_code=426)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "message": str(exc.detail)}, status_code=exc.status_code)

    app = Starlette(routes=[
        WebSocketRoute(settings.path, ws_endpoint),
        Route(settings.path, upgrade_required),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/publish", publish, methods=["POST"]),
        *[Route(path, static) for path in FILES],
    ], lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.service = service
    app.state.broadcaster = bc
    app.state.shutdown = shutdown
    return app
