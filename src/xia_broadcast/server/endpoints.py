"""The HTTP endpoints: one table, served alike by the standalone server and the ASGI app.

An :class:`Endpoint` says what a transport must know *before* it reads anything past a request's headers:
whether the endpoint takes a body at all (only those get their body read; any other request that comes
with one is answered and its connection closed, the body unread) and which credentials it needs (checked
from the headers, so that no unauthenticated body is ever buffered). Handlers are coroutine functions of the
:class:`~.service.Service` and an :class:`HttpRequest`; they do no I/O (a publish may wait for the backend).

Extra ``GET`` endpoints that answer fixed bytes are one line each::

    table.add_static("/client.js", lambda: static_response("/client.js"))
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import HttpError
from .auth import AuthError
from .config import Settings
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .service import PublishError, Service
from .static import FILES, static_response

JSON = "application/json"


@dataclass(frozen=True)
class HttpRequest:
    """A request as a handler sees it: ``headers`` keyed by lower-case name; ``body`` empty unless the
    endpoint reads one."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass(frozen=True)
class HttpResponse:
    """A complete answer: status, body bytes and their content type."""

    status: int
    body: bytes
    content_type: str = JSON

    @classmethod
    def json(cls, payload: object, status: int = 200) -> HttpResponse:
        return cls(status, orjson.dumps(payload))

    @classmethod
    def error(cls, status: int, error: str, message: str) -> HttpResponse:
        """The documented error answer ``{"error": <code>, "message": <what is wrong>}``."""
        return cls.json({"error": error, "message": message}, status)

    @classmethod
    def of(cls, exc: HttpError) -> HttpResponse:
        return cls.error(exc.status, exc.error, str(exc))


class Auth(enum.Enum):
    """Credentials an endpoint needs, checked from the request headers before its body is read."""

    NONE = "none"
    #: a publisher key (``X-Publisher-Key`` or ``Authorization: Bearer``), see ``Authenticator.publisher``
    PUBLISHER = "publisher"


#: an endpoint's handler (a coroutine: a publish may wait for the backend)
Handler = Callable[["Service[Any]", HttpRequest], Coroutine[Any, Any, HttpResponse]]


@dataclass(frozen=True)
class Endpoint:
    """One route: ``method`` and ``path``, what answers it, whether it reads a body, what auth it needs.

    ``websocket``: the WebSocket endpoint; a request that asks to upgrade is upgraded by the transport,
    any other gets ``handler``'s answer (426).
    """

    method: str
    path: str
    handler: Handler
    reads_body: bool = False
    auth: Auth = Auth.NONE
    websocket: bool = False
    #: the media type a body must be declared as (``Content-Type``, parameters aside); None: any
    content_type: str | None = None


class EndpointTable:
    """Every endpoint of a server, looked up by path and method.

    :meth:`resolve` answers what a request gets before anything but its headers is read: the endpoint,
    or the 404/405 answer.
    """

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, Endpoint]] = {}

    def add(self, endpoint: Endpoint) -> None:
        methods = self._routes.setdefault(endpoint.path, {})
        if endpoint.method in methods:
            raise ValueError(f"{endpoint.method} {endpoint.path} is already an endpoint")
        methods[endpoint.method] = endpoint

    def add_static(self, path: str, content: Callable[[], tuple[str, bytes] | None]) -> None:
        """A ``GET path`` answering ``content()``: ``(content type, bytes)``, or 404 when it gives None."""

        async def handler(_: Service[Any], request: HttpRequest) -> HttpResponse:
            found = content()
            if found is None:
                return HttpResponse.error(404, "not_found", f"no endpoint {request.path}")
            return HttpResponse(200, found[1], found[0])

        self.add(Endpoint("GET", path, handler))

    def resolve(self, method: str, path: str) -> Endpoint | HttpResponse:
        """The endpoint of ``method path``, or the answer for a path (404) or method (405) it does not have.
        ``HEAD`` is not served: it gets 405 like any method an endpoint does not name."""
        methods = self._routes.get(path)
        if methods is None:
            return HttpResponse.error(404, "not_found", f"no endpoint {path}")
        endpoint = methods.get(method)
        if endpoint is None:
            allowed = ", ".join(sorted(methods))
            return HttpResponse.error(405, "method_not_allowed", f"{path}: {allowed} only")
        return endpoint

    def __iter__(self) -> Iterator[Endpoint]:
        for methods in self._routes.values():
            yield from methods.values()


class BodyBudget:
    """The bytes of request bodies being received at once, over every connection of one server, and their
    bound (``max_body_bytes``). A request reserves its declared ``Content-Length`` before its body is read
    (a chunked one reserves as it grows) and releases it once answered or gone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reserved = 0

    def reserve(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (nothing reserved) when that would pass the bound."""
        if self.reserved + size > self.limit:
            return False
        self.reserved += size
        return True

    def release(self, size: int) -> None:
        self.reserved -= size


def busy() -> HttpError:
    """The refusal of a body that does not fit the :class:`BodyBudget` (503)."""
    return HttpError(503, "busy", "too many request bodies at once, retry later")


def refuse_before_body(service: Service[Any], endpoint: Endpoint, headers: Mapping[str, str],
                       declared_length: int | None) -> HttpResponse | None:
    """The answer a request gets from its headers alone, or None when its body may be read.

    Checks the endpoint's credentials (401), a declared ``Content-Length`` over ``max_publish_size`` (413) and
    the declared ``Content-Type`` (415).
    """
    if endpoint.auth is Auth.PUBLISHER:
        try:
            service.auth.publisher(headers)
        except AuthError as exc:
            return HttpResponse.error(401, "unauthorized", str(exc))
    limit = service.settings.max_publish_size
    if endpoint.reads_body and declared_length is not None and declared_length > limit:
        return HttpResponse.error(413, "too_large", f"body over {limit} bytes")
    if endpoint.content_type is not None:
        declared = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if declared != endpoint.content_type:
            # a page of another site can send a simple request (a form, text/plain) without asking first;
            # one declared application/json needs a preflight, which this server never grants
            return HttpResponse.error(415, "unsupported_media_type",
                                      f"{endpoint.path} takes Content-Type: {endpoint.content_type}, not "
                                      f"{declared or 'none'!r}"[:200])
    return None


# -- the handlers ------------------------------------------------------------------------------------------


async def healthz(service: Service[Any], _: HttpRequest) -> HttpResponse:
    return HttpResponse.json(service.health())


async def readyz(service: Service[Any], _: HttpRequest) -> HttpResponse:
    ok = service.ready()
    return HttpResponse.json({"ready": ok}, 200 if ok else 503)


async def metrics(service: Service[Any], _: HttpRequest) -> HttpResponse:
    return HttpResponse(200, service.metrics_text(), METRICS_CONTENT_TYPE)


async def publish(service: Service[Any], request: HttpRequest) -> HttpResponse:
    try:
        return HttpResponse.json({"seqs": await service.publish_http(request.headers, request.body)})
    except PublishError as exc:
        return HttpResponse.of(exc)


async def upgrade_required(_: Service[Any], __: HttpRequest) -> HttpResponse:
    return HttpResponse.error(426, "upgrade_required", "WebSocket endpoint")


def default_endpoints(settings: Settings) -> EndpointTable:
    """The endpoints of ``docs/protocol.md`` section 6, with the WebSocket endpoint at ``settings.path``."""
    table = EndpointTable()
    table.add(Endpoint("GET", settings.path, upgrade_required, websocket=True))
    table.add(Endpoint("GET", "/healthz", healthz))
    table.add(Endpoint("GET", "/readyz", readyz))
    table.add(Endpoint("GET", "/metrics", metrics))
    table.add(Endpoint("POST", "/publish", publish, reads_body=True, auth=Auth.PUBLISHER, content_type=JSON))
    for path in FILES:  # the browser client and the demo page
        table.add_static(path, functools.partial(static_response, path, settings))
    return table
