"""File descriptors: a server under a low fd limit says so, refuses with 4503 instead of failing to accept,
and when accept fails for want of descriptors it pauses quietly and serves again once they are free.

Each test runs ``xia-broadcast serve`` in a child process whose ``RLIMIT_NOFILE`` is set before it starts.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from helpers import RECV_TIMEOUT, UPGRADE_REQUEST, ServerProcess, raw_subscribe, read_frame, read_response

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and uses prlimit")


def records(server: Any, text: str) -> list[dict[str, Any]]:
    return [r for r in server.log_records() if text in r.get("msg", "")]


async def http_get(port: int, path: str) -> int:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), RECV_TIMEOUT)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    try:
        return (await read_response(reader))[0]
    finally:
        writer.close()


async def test_under_a_low_fd_limit_max_connections_is_lowered_and_one_more_gets_4503(
        server_process: Callable[..., ServerProcess]) -> None:
    server = server_process(fd_limit=128)
    lowered = records(server, "max_connections lowered")
    assert len(lowered) == 1, server.log_text()
    allowed, limit = lowered[0]["max_connections"], lowered[0]["fd_limit"]
    assert limit == 128 and 0 < allowed < 128
    clients = []
    try:
        for _ in range(allowed):
            clients.append(await raw_subscribe(server.port, {"Order": {}}))
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), RECV_TIMEOUT)
        writer.write(UPGRADE_REQUEST.format(path="/ws").encode())
        assert (await read_response(reader))[0] == 101
        opcode, payload = await read_frame(reader)
        assert (opcode, int.from_bytes(payload[:2], "big")) == (0x8, 4503)
        writer.close()
        assert await http_get(server.port, "/healthz") == 200
    finally:
        for _, w in clients:
            w.close()
    assert "Traceback" not in server.log_text()


async def test_out_of_fds_accepting_pauses_with_one_line_per_pause_and_resumes(
        server_process: Callable[..., ServerProcess]) -> None:
    server = server_process(fd_limit=256)
    # a kept-alive connection, opened before the process runs out of descriptors
    keep_reader, keep_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port),
                                                      RECV_TIMEOUT)
    keep_writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await read_response(keep_reader))[0] == 200
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (server.open_fds(), 256))  # not one fd more
    waiting = []
    try:
        started = time.monotonic()
        for _ in range(10):
            waiting.append(await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), RECV_TIMEOUT))
        for _, writer in waiting:
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        # the connection opened before keeps being served meanwhile
        for _ in range(3):
            keep_writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, _, body = await read_response(keep_reader)
            assert status == 200 and json.loads(body)["status"] == "ok"
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
        paused = records(server, "accept paused")
        assert 1 <= len(paused) <= elapsed / 0.5 + 2, paused
        assert "Traceback" not in server.log_text()
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (256, 256))
        for reader, _ in waiting:  # every client that waited in the backlog is served now
            assert (await read_response(reader))[0] == 200
    finally:
        keep_writer.close()
        for _, writer in waiting:
            writer.close()
