"""Embedding: a Starlette application to mount into an existing Starlette or FastAPI app.

    from fastapi import FastAPI
    from xia_broadcast.server.asgi import create_app
    from xia_broadcast.server.config import load_settings

    app = FastAPI()
    app.mount("/realtime", create_app(load_settings("broadcast.toml")))  # ws at /realtime/ws

It speaks the same protocol as the standalone server (handshake, close codes, ``POST /publish``,
``/healthz``, ``/readyz``, ``/metrics``) on the same core, from the same endpoint table
(:mod:`.endpoints`): a publisher's key is checked from the headers before its body is read, bodies being
received at once hold at most ``max_body_bytes``, and ``origin_allowlist`` refuses other origins (403).
The other HTTP limits (sockets, request timeouts, ``Expect: 100-continue``) are the ASGI server's.
One difference: on shutdown, an ASGI server
such as uvicorn closes the websockets itself (uvicorn: 1012) before the app's lifespan ends; for the
documented 1001 after a flush, call ``await app.state.shutdown()`` before stopping the ASGI server. The
inbound message size limit and keepalive pings are the ASGI server's (uvicorn: ``--ws-max-size``,
``--ws-ping-interval``), not ``max_message_size``/``ping_interval``.
Sending goes through the ASGI server, one
awaited ``send_text`` per message in each websocket's own task (a
:class:`~xia_broadcast.transport.TaskTransport`). The in-process publisher is
``await app.state.service.publish(...)`` (``app.state.service.publish_nowait(...)`` on the memory journal).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..core.protocol import CLOSE_BAD_HANDSHAKE, CLOSE_GOING_AWAY, Refusal
from ..errors import HttpError
from ..fanout import Outgoing
from ..transport import TaskTransport
from .config import Settings
from .endpoints import (
    BodyBudget,
    Endpoint,
    HttpRequest,
    HttpResponse,
    busy,
    default_endpoints,
    refuse_before_body,
)
from .service import Service, Session
from .upgrade import UpgradeError, check_origin


async def _send(websocket: WebSocket, messages: list[Outgoing]) -> None:
    for out in messages:
        await websocket.send_text(out.text)


def _connected(websocket: WebSocket) -> bool:
    return (websocket.application_state == WebSocketState.CONNECTED
            and websocket.client_state == WebSocketState.CONNECTED)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await websocket.close(code, reason)


def create_app(settings: Settings | None = None) -> Starlette:
    """A Starlette app serving the WebSocket endpoint (``settings.path``) and the HTTP endpoints; its
    :class:`~.service.Service` (with the Hub) is ``app.state.service``."""
    settings = settings or Settings()
    sockets: set[WebSocket] = set()

    def forget(websocket: WebSocket) -> None:
        service.hub.remove(websocket)

    transport: TaskTransport[WebSocket] = TaskTransport(_send, _connected, _close, forget)
    service: Service[WebSocket] = Service(settings, transport)

    async def refuse(websocket: WebSocket, code: int, reason: str) -> None:
        service.note_close(code)
        await _close(websocket, code, reason)

    async def ws_endpoint(websocket: WebSocket) -> None:
        try:
            check_origin(websocket.headers.items(), settings.origin_allowlist)
        except UpgradeError:
            await websocket.close()  # before the accept: the ASGI server answers 403
            return
        await websocket.accept()
        session: Session | None = None
        refusal = service.admit()
        sockets.add(websocket)
        try:
            if refusal is not None:
                await refuse(websocket, refusal.code, refusal.reason)
                return
            try:
                first = await asyncio.wait_for(websocket.receive(), settings.handshake_timeout)
            except TimeoutError:
                await refuse(websocket, CLOSE_BAD_HANDSHAKE, "Need connection information")
                return
            if first["type"] == "websocket.disconnect":
                return
            message = first.get("text")
            if message is None:
                message = first.get("bytes") or b""
            try:
                session = await service.open_session(websocket, message, dict(websocket.headers))
            except Refusal as exc:
                await refuse(websocket, exc.code, exc.reason)
                return

            def close(code: int, reason: str) -> None:
                transport.spawn(refuse(websocket, code, reason))

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
            service.release()
            conn = service.hub.connections.get(websocket)
            if conn is not None:
                transport.stop(conn)  # its draining task, if any: nothing more is sent
            service.close_session(websocket, session)

    table = default_endpoints(settings)
    bodies = BodyBudget(settings.max_body_bytes)

    def route(endpoint: Endpoint) -> Route:
        async def answer(request: Request) -> Response:
            headers = {k.lower(): v for k, v in request.headers.items()}
            declared_text = headers.get("content-length", "")
            declared = int(declared_text) if declared_text.isdigit() else None
            response = refuse_before_body(service, endpoint, headers, declared)
            body = b""
            if response is None and endpoint.reads_body:
                try:
                    body = await read_body(request, declared or 0)
                except HttpError as exc:
                    response = HttpResponse.of(exc)
            if response is None:
                response = await endpoint.handler(service, HttpRequest(request.method, endpoint.path, headers, body))
            return Response(response.body, status_code=response.status, media_type=response.content_type)

        return Route(endpoint.path, answer, methods=[endpoint.method])

    async def read_body(request: Request, declared: int) -> bytes:
        """The body, up to ``max_publish_size``, its bytes reserved in ``max_body_bytes`` while it is read
        (its declared length first; a chunked body as it grows)."""
        limit = settings.max_publish_size
        if not bodies.reserve(declared):
            raise busy()
        reserved = declared
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise HttpError(413, "too_large", f"body over {limit} bytes")
                if len(body) > reserved:
                    if not bodies.reserve(len(body) - reserved):
                        raise busy()
                    reserved = len(body)
        finally:
            bodies.release(reserved)
        return bytes(body)

    async def shutdown() -> None:
        """Flush what is queued, then close every websocket with 1001 (the app's lifespan calls this;
        a parent app that mounts this one calls ``app.state.shutdown()`` from its own lifespan)."""
        service.shutting_down = True
        await service.hub.idle(settings.shutdown_timeout)
        for ws in list(sockets):
            await _close(ws, CLOSE_GOING_AWAY, "shutting down")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await service.start()
        yield
        await shutdown()
        await service.stop()

    # a mounted app's lifespan does not run: with the memory backend it is ready once built; with Redis the
    # host app calls ``await app.state.start()`` from its own lifespan

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "message": str(exc.detail)}, status_code=exc.status_code)

    routes: list[BaseRoute] = [WebSocketRoute(settings.path, ws_endpoint)]
    routes += [route(endpoint) for endpoint in table]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.service = service
    app.state.start = service.start
    app.state.shutdown = shutdown
    app.state.body_budget = bodies
    return app
