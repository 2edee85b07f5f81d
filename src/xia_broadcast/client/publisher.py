"""Publishing over HTTP: ``POST /publish`` with the publisher key, on one kept-alive connection.

:class:`Publisher` is synchronous and dependency-free (``http.client``), for scripts and the ``xia-broadcast
publish`` command; :class:`AsyncPublisher` does the same from asyncio code (asyncio streams and ``h11``, a
dependency of the server already): the same methods, answers and errors, awaited.
The endpoint, its answers and its error codes are in ``docs/protocol.md``, section 6.

Both keep their connection open between requests. A kept-alive connection that the server closed meanwhile
(it closes one idle for 60 s) is seen only when the next request is sent on it: when such a reused connection
ends before any byte of an answer came back, the request is sent once more on a new connection (the server
had not read it). A failure on a new connection is the caller's: a refusal raises :class:`PublishRefused`,
a network failure ``OSError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import ssl
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import h11

from ..errors import XiaBroadcastError

#: errors of a reused connection that the server had closed before the request reached it
_STALE_ERRORS = (http.client.RemoteDisconnected, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


class PublishRefused(XiaBroadcastError):
    """The server refused a publish request: HTTP ``status``, its ``error`` code (``bad_request``,
    ``unauthorized``, ``unknown_class``, ``invalid_change``, ``too_large``...) and its message."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message


class _Endpoint:
    """Where ``POST /publish`` goes, from a server's base URL."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an HTTP URL: {base_url!r}")
        self.scheme, self.host, self.port = scheme, parts.hostname, parts.port
        self.path = parts.path.rstrip("/") + "/publish"
        #: the Host header: the URL's host and port as written (an IPv6 address in brackets)
        self.authority = parts.netloc.rpartition("@")[2]


def _change(cls: str, op: str, doc: Mapping[str, Any], previous: Mapping[str, Any] | None) -> dict[str, Any]:
    change: dict[str, Any] = {"class": cls, "op": op, "doc": dict(doc)}
    if previous is not None:
        change["previous"] = dict(previous)
    return change


def _body(changes: Sequence[Mapping[str, Any]]) -> bytes:
    body = dict(changes[0]) if len(changes) == 1 else {"changes": [dict(c) for c in changes]}
    return json.dumps(body).encode()


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return data.decode(errors="replace")[:200]


def _seqs(status: int, answer: Any, count: int) -> list[str]:
    """The seqs of an answer to ``count`` changes; raises :class:`PublishRefused` for anything else."""
    if status != 200:
        error = answer.get("error", "http_error") if isinstance(answer, dict) else "http_error"
        message = answer.get("message", "") if isinstance(answer, dict) else str(answer)
        raise PublishRefused(status, str(error), str(message))
    seqs = answer.get("seqs") if isinstance(answer, dict) else None
    if not isinstance(seqs, list) or len(seqs) != count:
        raise PublishRefused(status, "bad_answer", f"unexpected answer {answer!r}")
    return [str(s) for s in seqs]


class Publisher:
    """Publishes changes to a server's ``POST /publish``.

    Args:
        base_url: the server's HTTP base, e.g. ``http://127.0.0.1:8765`` (``ws://``/``wss://`` are read as
            ``http://``/``https://``; a path is kept as a prefix, for an app mounted under one).
        key: the publisher key, sent as ``X-Publisher-Key`` (None: none sent).
        timeout: seconds allowed for connecting and for each answer.
    """

    def __init__(self, base_url: str, key: str | None = None, timeout: float = 10.0) -> None:
        endpoint = _Endpoint(base_url)
        self.scheme, self.host, self.port, self.path = endpoint.scheme, endpoint.host, endpoint.port, endpoint.path
        self.key = key
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def publish(self, cls: str, op: str, doc: Mapping[str, Any],
                previous: Mapping[str, Any] | None = None) -> str:
        """Publish one change; returns its seq. Raises :class:`PublishRefused` or ``OSError``."""
        return self.send([_change(cls, op, doc, previous)])[0]

    def send(self, changes: Sequence[Mapping[str, Any]]) -> list[str]:
        """Publish change objects (``{"class", "op", "doc", "previous"?}``) in one request; returns their
        seqs in order. A batch is all or nothing: a refused batch applies none of its changes."""
        if not changes:
            return []
        status, answer = self._post(_body(changes))
        return _seqs(status, answer, len(changes))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, body: bytes) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if self.key is not None:
            headers["X-Publisher-Key"] = self.key
        for attempt in (1, 2):
            reused = self._conn is not None and self._conn.sock is not None
            if self._conn is None:
                cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
                self._conn = cls(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request("POST", self.path, body=body, headers=headers)
                response = self._conn.getresponse()
            except _STALE_ERRORS:
                self.close()
                if reused and attempt == 1:
                    continue  # a kept-alive connection the server had closed: the request never reached it
                raise
            except (OSError, http.client.HTTPException):
                self.close()
                raise
            break
        try:
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if response.will_close:
            self.close()
        return response.status, _decode(data)


class _Stale(XiaBroadcastError):
    """Internal: the connection ended before any byte of an answer came back."""


class AsyncPublisher:
    """Publishes changes to a server's ``POST /publish`` from asyncio code: :class:`Publisher`'s methods,
    answers and errors, awaited.

    One kept-alive connection; requests made by several tasks at once are sent one after the other on it. A
    body over 64 KiB is sent with ``Expect: 100-continue``, so that a refusal decided from the headers (a
    wrong key: 401; over the server's ``max_publish_size``: 413) comes back as :class:`PublishRefused` before
    the body is sent (a server that does not answer the expectation within a second is sent the body).

    Args:
        base_url: the server's HTTP base, e.g. ``http://127.0.0.1:8765`` (``ws://``/``wss://`` are read as
            ``http://``/``https://``; a path is kept as a prefix, for an app mounted under one).
        key: the publisher key, sent as ``X-Publisher-Key`` (None: none sent).
        timeout: seconds allowed for connecting, for sending, and for each part of the answer.
    """

    #: bodies larger than this are sent after the server's ``100 Continue`` (bytes)
    EXPECT_CONTINUE_OVER = 64 * 1024
    #: seconds to wait for the ``100 Continue`` before sending the body anyway
    CONTINUE_WAIT = 1.0

    def __init__(self, base_url: str, key: str | None = None, timeout: float = 10.0) -> None:
        endpoint = _Endpoint(base_url)
        self.scheme, self.host, self.port, self.path = endpoint.scheme, endpoint.host, endpoint.port, endpoint.path
        self._authority = endpoint.authority
        self.key = key
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._http = h11.Connection(h11.CLIENT)
        self._answered = False  # some byte of the current answer came back

    async def publish(self, cls: str, op: str, doc: Mapping[str, Any],
                      previous: Mapping[str, Any] | None = None) -> str:
        """Publish one change; returns its seq. Raises :class:`PublishRefused` or ``OSError``."""
        return (await self.send([_change(cls, op, doc, previous)]))[0]

    async def send(self, changes: Sequence[Mapping[str, Any]]) -> list[str]:
        """Publish change objects (``{"class", "op", "doc", "previous"?}``) in one request; returns their
        seqs in order. A batch is all or nothing: a refused batch applies none of its changes."""
        if not changes:
            return []
        status, answer = await self._post(_body(changes))
        return _seqs(status, answer, len(changes))

    async def close(self) -> None:
        writer = self._writer
        self._drop()
        if writer is not None:
            with contextlib.suppress(OSError):  # TimeoutError included
                await asyncio.wait_for(writer.wait_closed(), self.timeout)

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- one request -------------------------------------------------------------------------------------

    async def _post(self, body: bytes) -> tuple[int, Any]:
        async with self._lock:
            for attempt in (1, 2):
                reused = self._writer is not None
                try:
                    if self._writer is None:
                        await self._connect()
                    return await self._exchange(body)
                except _Stale:
                    self._drop()
                    if reused and attempt == 1:
                        continue  # a kept-alive connection the server had closed: the request never reached it
                    raise ConnectionResetError(f"{self._authority} closed the connection without answering") \
                        from None
                except h11.ProtocolError as exc:
                    self._drop()
                    raise ConnectionError(f"{self._authority} did not answer in HTTP/1.1: {exc}") from None
                except BaseException:
                    self._drop()  # cancelled or failed half way: the connection's state is unknown
                    raise
            raise AssertionError("not reached")

    async def _connect(self) -> None:
        context = ssl.create_default_context() if self.scheme == "https" else None
        port = self.port or (443 if self.scheme == "https" else 80)
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, port, ssl=context), self.timeout)
        self._http = h11.Connection(h11.CLIENT)

    def _drop(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()

    async def _exchange(self, body: bytes) -> tuple[int, Any]:
        """Send the request, read the answer. Raises :class:`_Stale` when the connection ended before any
        byte of an answer came back."""
        assert self._writer is not None
        writer, http = self._writer, self._http
        headers = [("Host", self._authority), ("Content-Type", "application/json"),
                   ("Content-Length", str(len(body)))]
        if self.key is not None:
            headers.append(("X-Publisher-Key", self.key))
        expect = len(body) > self.EXPECT_CONTINUE_OVER
        if expect:
            headers.append(("Expect", "100-continue"))
        self._answered = False
        writer.write(http.send(h11.Request(method="POST", target=self.path, headers=headers)) or b"")
        event: Any = None
        if expect:
            await self._drain()
            try:
                event = await self._next_event(min(self.CONTINUE_WAIT, self.timeout))
            except TimeoutError:
                event = None  # no answer to the expectation: send the body anyway
            if isinstance(event, h11.InformationalResponse):  # 100 Continue
                event = None
        if event is None:  # else the server answered before the body: it is not sent
            writer.write((http.send(h11.Data(data=body)) or b"") + (http.send(h11.EndOfMessage()) or b""))
            # the server may have answered (and closed) before reading it all: its answer is read below
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                await self._drain()
        status = 0
        chunks: list[bytes] = []
        while True:
            if event is None:
                event = await self._next_event(self.timeout)
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError(f"{self._authority} closed the connection during its answer")
            event = None
        if http.our_state is h11.DONE and http.their_state is h11.DONE:
            http.start_next_cycle()  # kept alive for the next request
        else:
            self._drop()
        return status, _decode(b"".join(chunks))

    async def _drain(self) -> None:
        assert self._writer is not None
        await asyncio.wait_for(self._writer.drain(), self.timeout)

    async def _next_event(self, timeout: float) -> Any:
        """The next HTTP event of the answer, reading as needed (each read within ``timeout``)."""
        assert self._reader is not None
        while True:
            event = self._http.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await asyncio.wait_for(self._reader.read(65536), timeout)
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
                if not self._answered:
                    raise _Stale from None
                raise
            if not data and not self._answered:
                raise _Stale
            self._answered = self._answered or bool(data)
            self._http.receive_data(data)
