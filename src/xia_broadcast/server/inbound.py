"""What a WebSocket client may send: a budget of frames, and a bound on what is parsed per loop turn.

A client of this protocol sends almost nothing after its first message: pongs to the server's pings, its
own pings, a token refresh now and then. Parsing costs the event loop about a microsecond per byte of tiny
frames, for every connection at once, so a client that streams empty frames (continuations, pings, one-byte
messages) could hold the loop for every other client. Two bounds keep that cost per connection small:

* :data:`INBOUND_CHUNK`: at most this many bytes of one connection are parsed per loop turn; the rest of a
  read waits (its socket is not read meanwhile) and is parsed on the next turns;
* :class:`FrameBudget`: a connection may send ``burst`` frames at once and ``rate`` frames per second on
  average (every frame counts: data, continuation, ping, pong, close); past it, it is closed with 4408.
"""

from __future__ import annotations

#: bytes of one connection's input parsed per loop turn: about 170 frames of the tiniest kind, a fraction of
#: a millisecond to parse; a message of ``max_message_size`` (64 KiB) takes 64 turns
INBOUND_CHUNK = 1024


class FrameBudget:
    """A token bucket of frames: ``burst`` at once, refilled at ``rate`` per second (times from the caller's
    monotonic clock, in seconds). Memory: two floats."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, burst: int, rate: float, now: float) -> None:
        self.burst = burst
        self.rate = rate
        self._tokens = float(burst)
        self._at = now

    def spend(self, frames: int, now: float) -> bool:
        """Take ``frames`` from the budget; False when that overdraws it (the client sends too much)."""
        if frames <= 0:
            return True
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate) - frames
        self._at = now
        return self._tokens >= 0
