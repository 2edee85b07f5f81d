"""Publishing over HTTP: ``POST /publish`` with the publisher key, on one kept-alive connection.

Synchronous and dependency-free (``http.client``), for scripts and the ``xia-broadcast publish`` command.
The endpoint, its answers and its error codes are in ``docs/protocol.md``, section 6.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..errors import XiaBroadcastError


class PublishRefused(XiaBroadcastError):
    """The server refused a publish request: HTTP ``status``, its ``error`` code (``bad_request``,
    ``unauthorized``, ``unknown_class``, ``invalid_change``, ``too_large``...) and its message."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message


class Publisher:
    """Publishes changes to a server's ``POST /publish``.

    Args:
        base_url: the server's HTTP base, e.g. ``http://127.0.0.1:8765`` (``ws://``/``wss://`` are read as
            ``http://``/``https://``; a path is kept as a prefix, for an app mounted under one).
        key: the publisher key, sent as ``X-Publisher-Key`` (None: none sent).
        timeout: seconds allowed for connecting and for each answer.
    """

    def __init__(self, base_url: str, key: str | None = None, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an HTTP URL: {base_url!r}")
        self.scheme, self.host, self.port = scheme, parts.hostname, parts.port
        self.path = parts.path.rstrip("/") + "/publish"
        self.key = key
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def publish(self, cls: str, op: str, doc: Mapping[str, Any],
                previous: Mapping[str, Any] | None = None) -> str:
        """Publish one change; returns its seq. Raises :class:`PublishRefused` or ``OSError``."""
        change: dict[str, Any] = {"class": cls, "op": op, "doc": dict(doc)}
        if previous is not None:
            change["previous"] = dict(previous)
        return self.send([change])[0]

    def send(self, changes: Sequence[Mapping[str, Any]]) -> list[str]:
        """Publish change objects (``{"class", "op", "doc", "previous"?}``) in one request; returns their
        seqs in order. A batch is all or nothing: a refused batch applies none of its changes."""
        if not changes:
            return []
        body = dict(changes[0]) if len(changes) == 1 else {"changes": [dict(c) for c in changes]}
        status, answer = self._post(json.dumps(body).encode())
        if status != 200:
            error = answer.get("error", "http_error") if isinstance(answer, dict) else "http_error"
            message = answer.get("message", "") if isinstance(answer, dict) else str(answer)
            raise PublishRefused(status, str(error), str(message))
        seqs = answer.get("seqs") if isinstance(answer, dict) else None
        if not isinstance(seqs, list) or len(seqs) != len(changes):
            raise PublishRefused(status, "bad_answer", f"unexpected answer {answer!r}")
        return [str(s) for s in seqs]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, body: bytes) -> tuple[int, Any]:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self.host, self.port, timeout=self.timeout)
        headers = {"Content-Type": "application/json"}
        if self.key is not None:
            headers["X-Publisher-Key"] = self.key
        try:
            self._conn.request("POST", self.path, body=body, headers=headers)
            response = self._conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if response.will_close:
            self.close()
        try:
            return response.status, json.loads(data) if data else None
        except ValueError:
            return response.status, data.decode(errors="replace")[:200]
