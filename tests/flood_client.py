"""An abusive WebSocket client, run as a process of its own by tests/test_inbound_budget.py.

    python flood_client.py PORT KIND SECONDS

For SECONDS it connects to 127.0.0.1:PORT, upgrades, and streams tiny masked frames as fast as the server
reads them: KIND ``fragments`` (a text frame without FIN, then empty continuation frames), ``pings`` (empty
pings) or ``text`` (a valid handshake, then one-byte text messages). Closed, it connects again a tenth of a
second later (a flood of connections is another attack, bounded by other limits). It prints one JSON line:
connections made and the close codes the server sent.
"""

from __future__ import annotations

import json
import socket
import sys
import time

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
MASK = b"\x01\x02\x03\x04"


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame (payload under 126 bytes)."""
    return bytes(((0x80 if fin else 0) | opcode, 0x80 | len(payload))) + MASK + bytes(
        b ^ MASK[i % 4] for i, b in enumerate(payload))


def stream(kind: str) -> tuple[bytes, bytes]:
    """What is sent first, and what is sent again and again (about 64 KiB of tiny frames)."""
    if kind == "fragments":
        return frame(0x1, b"{", fin=False), frame(0x0, b"", fin=False) * 10_000
    if kind == "pings":
        return b"", frame(0x9, b"") * 10_000
    return frame(0x1, b'{"Order": {}}'), frame(0x1, b"x") * 9_000


def close_code(sock: socket.socket) -> int | None:
    """The code of the close frame the server sent, if one is among what it sent (read for a moment)."""
    data = b""
    sock.settimeout(0.5)
    try:
        while len(data) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    head = data.find(b"\r\n\r\n")
    i = head + 4 if head >= 0 else 0
    while i + 2 <= len(data):
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        j = i + 2
        if n == 126:
            n, j = int.from_bytes(data[j:j + 2], "big"), j + 2
        elif n == 127:
            n, j = int.from_bytes(data[j:j + 8], "big"), j + 8
        if opcode == 0x8 and n >= 2:
            return int.from_bytes(data[j:j + 2], "big")
        i = j + n
    return None


def main() -> None:
    port, kind, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    first, repeated = stream(kind)
    deadline = time.monotonic() + seconds
    connections, codes = 0, []
    while time.monotonic() < deadline:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        connections += 1
        try:
            sock.sendall(UPGRADE + first)
            while time.monotonic() < deadline:
                sock.sendall(repeated)
        except OSError:
            pass  # the server closed it
        codes.append(close_code(sock))
        sock.close()
        time.sleep(0.1)
    print(json.dumps({"connections": connections, "codes": codes}), flush=True)


if __name__ == "__main__":
    main()
