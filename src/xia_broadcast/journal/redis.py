"""The cluster backend: one Redis Stream per class, tailed by every node that has subscribers for it.

Keys (``prefix`` defaults to ``xia:``):

* ``{prefix}stream:{class}``: the class's changes, one entry per change, fields ``e`` (the epoch the entry
  was written in), ``p`` (the id of the entry added before it) and ``r`` (the change record,
  :meth:`Change.to_record`, JSON). The entry id ``ms-n`` is the change's seq in fixed-width form
  (:func:`seq_of_id`), so seqs sort as strings and convert back to ids.
* ``{prefix}meta:{class}``: a hash: ``epoch`` (``<13-digit ms>-<8 hex>``, created by the first publish, or
  when a node watches a declared class: a subscriber of a name nobody publishes writes no key), ``last``
  (the id of the last entry added), ``sbytes`` (the bytes of the document store), ``slast`` (the last entry
  the store was kept with: a class published without it since, by a node of an earlier version, has its
  store refused) and ``store`` (why the store was refused, when it was). A Redis that comes back empty has
  no meta key: the next publish creates a new epoch (and drops the store), and positions carrying the old
  one are history gone.
* ``{prefix}docs:{class}``: the document store (:mod:`.store`), a hash: field the document's ``_id`` as
  JSON, value ``<entry id> <change record>`` of its last change. Updated by the publish script with the
  entry, which also gets field ``v``: the record the store held before (the previous state, over one the
  publisher gave; empty: none, and none given), so every node and every replay finds scope exits.
* ``{prefix}wake:{node}``: a one-entry stream per node, written by :meth:`RedisBackend.watch` to wake the
  node's blocked read so that it starts tailing a new class at once; deleted by :meth:`RedisBackend.close`.

Publishing and reading are Lua scripts, so the epoch, the entry and the trimming (or the entries and the
trim state a read decides "history gone" from) are one atomic step; a publish is one round trip.

Retention: by count (``XADD MAXLEN``) and by age (``XTRIM MINID``, computed from this node's clock at each
publish), approximate (``~``, Redis trims whole radix-tree nodes, by default 100 entries: a stream holds at
least ``max_count`` entries and a little more) unless ``exact_trim``. There is no byte bound in Redis (it
would cost a size lookup per publish): bound memory with Redis's ``maxmemory`` and ``maxmemory-policy
noeviction`` (an evicted epoch key would start a new epoch; evicted stream entries would be a silent gap).
A change's cost in Redis is roughly its record size plus ~30 bytes of entry overhead.

History gone is exact: the first entry still held names, in ``p``, the newest entry trimming removed; a
position before it has lost changes, a position at or after it has not.

Requires Redis 6.2 or later (``MINID``, exclusive ranges) and redis-py 5 or later (the ``redis`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from ..core.change import BadChangeRecord, Change
from ..core.schema import DocSchema
from ..core.seq import format_seq
from .base import (
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_COUNT,
    Backend,
    BackendUnavailable,
    HistoryGone,
    OnChange,
    Position,
    SeqOrderError,
)
from .store import Snapshot, SnapshotRefused, StoreBounds, doc_key, stored_document

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("xia_broadcast.journal.redis")

#: seconds the tail waits, when watches wake it in quick succession, to take several new classes in one read
WAKE_GATHER = 0.01

#: a seq in the fixed-width form of a stream id: 13-digit milliseconds, 10-digit counter
_SEQ_RE = re.compile(r"^(\d{13})-(\d{10})$")


def seq_of_id(entry_id: str | bytes) -> str:
    """The seq of a stream entry id ``ms-n``: ``format_seq(ms, n)``, which sorts as a string."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, n = text.partition("-")
    return format_seq(int(ms), int(n or 0))


def id_of_seq(seq: str) -> str | None:
    """The stream entry id of a seq (None when ``seq`` is not in the fixed-width form)."""
    m = _SEQ_RE.match(seq)
    return None if m is None else f"{int(m[1])}-{int(m[2])}"


# Shared by both scripts: the class's epoch, created when missing (a new class, or a Redis that came back
# empty). The meta hash holds ``epoch`` and ``last`` (the id of the last entry ever added).
_EPOCH = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = string.format('%013d', now_ms()) .. '-' .. ARGV[1]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
  redis.call('DEL', KEYS[3])  -- a store of another epoch is not this one's
end
"""

# KEYS: stream, meta, docs. ARGV: new epoch token, record, id or "", maxlen or "", "1" approximate, minid (ms)
# or "", document key, op, "1" when the record holds the previous state, store max documents, store max bytes,
# the record to store ("": the record itself; else it without the previous state the publisher gave).
# Returns {entry id, epoch}. Invariants: every entry of a stream is after its epoch's start id ``ms-0`` (a
# new stream's first entry gets ``max(now, start)-1``, later ones are after it), so a position at the
# epoch's start misses nothing; every entry's ``p`` is the id of the entry added before it ("" for the
# first), so the first entry still held tells the newest one trimming removed. (Should the meta key alone
# be lost, e.g. deleted by hand, the stream's older entries fall before the new epoch's start: they read
# as history gone, never as part of the new epoch.)
_PUBLISH = _EPOCH + """
local start = tonumber(string.sub(epoch, 1, 13))
local id = ARGV[3]
if id == '' then
  id = '*'
  if redis.call('EXISTS', KEYS[1]) == 0 then
    id = string.format('%d', math.max(now_ms(), start)) .. '-1'
  end
elseif tonumber(string.match(id, '^(%d+)')) < start then
  return redis.error_reply('XIASEQ the seq is before the epoch ' .. epoch)
end
local prev = redis.call('HGET', KEYS[2], 'last') or ''
local refused = redis.call('HGET', KEYS[2], 'store')
if not refused and (redis.call('HGET', KEYS[2], 'slast') or '') ~= prev then
  -- the store was not kept with every change of the class (a class from before the store, or a node
  -- without it published since): it is not whole, so it is refused rather than served partial
  refused = 'the store does not hold every change of the class (published without a document store)'
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[2], 'store', refused, 'sbytes', 0)
end
local old = false
if not refused then
  old = redis.call('HGET', KEYS[3], ARGV[7])
  if old then old = string.sub(old, string.find(old, ' ', 1, true) + 1) end
end
local cmd = {'XADD', KEYS[1]}
if ARGV[4] ~= '' then
  table.insert(cmd, 'MAXLEN')
  if ARGV[5] == '1' then table.insert(cmd, '~') end
  table.insert(cmd, ARGV[4])
end
for _, v in ipairs({id, 'e', epoch, 'p', prev, 'r', ARGV[2]}) do table.insert(cmd, v) end
if not refused and (old or ARGV[9] ~= '1') then
  -- what subscribers were sent last wins over a previous state the publisher gave
  table.insert(cmd, 'v')
  table.insert(cmd, old or '')
end
local added = redis.call(unpack(cmd))
redis.call('HSET', KEYS[2], 'last', added)
if not refused then
  local delta = 0
  if old then delta = -#old end
  if ARGV[8] == 'D' then
    redis.call('HDEL', KEYS[3], ARGV[7])
  else
    local stored = ARGV[12]
    if stored == '' then stored = ARGV[2] end  -- without a previous state given, the record itself
    redis.call('HSET', KEYS[3], ARGV[7], added .. ' ' .. stored)
    delta = delta + #stored
  end
  local size = redis.call('HINCRBY', KEYS[2], 'sbytes', delta)
  local reason = false
  if redis.call('HLEN', KEYS[3]) > tonumber(ARGV[10]) then
    reason = 'more than ' .. ARGV[10] .. ' documents (store_max_documents)'
  elseif size > tonumber(ARGV[11]) then
    reason = 'more than ' .. ARGV[11] .. ' bytes of documents (store_max_bytes)'
  end
  if reason then
    redis.call('DEL', KEYS[3])
    redis.call('HSET', KEYS[2], 'store', reason, 'sbytes', 0)
  else
    redis.call('HSET', KEYS[2], 'slast', added)  -- the store holds every change up to this one
  end
end
if ARGV[6] ~= '' then
  -- the entry just added is always kept, even when this node's clock is ahead of Redis's
  local minid = ARGV[6]
  if tonumber(minid) > tonumber(string.match(added, '^(%d+)')) then minid = added end
  if ARGV[5] == '1' then
    redis.call('XTRIM', KEYS[1], 'MINID', '~', minid)
  else
    redis.call('XTRIM', KEYS[1], 'MINID', minid)
  end
end
return {added, epoch}
"""

# KEYS: stream, meta, docs. ARGV: new epoch token (unused: reading never creates an epoch, so a subscriber
# of a class nobody published leaves no key behind), range start ("-", "id" or "(id"), count (0: no entries).
# Returns {epoch or "" (none yet), last id or "", last trimmed id or "", first held id or "", entries}.
_READ = """
local epoch = redis.call('HGET', KEYS[2], 'epoch') or ''
local last = redis.call('HGET', KEYS[2], 'last') or ''
local trimmed, first, entries = '', '', {}
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #head > 0 then
  first = head[1][1]
  local fields = head[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'p' then trimmed = fields[i + 1] end
  end
elseif last ~= '' then
  trimmed = last  -- every entry was trimmed
end
if tonumber(ARGV[3]) > 0 and first ~= '' then
  entries = redis.call('XRANGE', KEYS[1], ARGV[2], '+', 'COUNT', ARGV[3])
end
return {epoch, last, trimmed, first, entries}
"""

# KEYS: stream, meta, docs. ARGV: new epoch token, "-", 0. The read script's answer, after creating the
# class's epoch when it has none (watching a declared class: its subscribers' confirmations name the epoch).
_ENSURE = _EPOCH + _READ

# KEYS: meta, docs. ARGV: HSCAN cursor, count. Returns {epoch or "", store refusal or "", next cursor, flat
# [key, value, ...]}: one page of the document store, with the state it belongs to.
_DOCUMENTS = """
local epoch = redis.call('HGET', KEYS[1], 'epoch') or ''
local refused = redis.call('HGET', KEYS[1], 'store') or ''
local page = redis.call('HSCAN', KEYS[2], ARGV[1], 'COUNT', ARGV[2])
return {epoch, refused, page[1], page[2]}
"""


def _import_redis() -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError("the Redis backend needs redis-py: pip install 'xia-broadcast[redis]'") from None
    return aioredis


class RedisBackend(Backend):
    """Changes in Redis Streams, shared by every node on the same Redis (see the module docstring for keys).

    Guarantees:

    * ``publish`` appends atomically (epoch, entry, trim) and returns the change's position; it raises
      :class:`BackendUnavailable` when Redis cannot be reached (if the connection broke after the command
      was sent, the change may have been appended: it then reaches every node like any other).
    * ``on_change`` receives each change of every watched class once, in stream order, on every node, the
      publishing node included (it hears its own changes through the same tail, so the order is the same
      everywhere). One task does one blocking ``XREAD`` over every watched stream.
    * When Redis is unreachable, ``ready`` is False; the tail reconnects with exponential backoff and jitter
      (``backoff_min`` to ``backoff_max`` seconds) and resumes from the last entry id it saw per stream, so
      nothing still retained is lost. A class whose epoch changed meanwhile (Redis came back empty) is read
      from the start of its new epoch, and its changes carry the new epoch.
    * ``read`` raises :class:`HistoryGone` when the position is before the epoch's start, in another epoch,
      unparseable, or before the newest entry trimming removed.

    Args:
        url: ``redis://host:port/db``.
        prefix: prefix of every key this backend writes.
        max_count: entries kept per stream (``MAXLEN``; None: no count bound).
        max_age: seconds an entry is kept (``MINID`` at each publish; None: no age bound).
        exact_trim: trim exactly (costs more CPU in Redis) instead of by whole radix-tree nodes.
        block_ms: the longest a tail read blocks (an idle node does one ``XREAD`` per ``block_ms``).
        read_count: entries taken per stream per tail read.
        backoff_min, backoff_max: reconnection delays, seconds (doubling, with +-50% jitter).
        timeout: seconds to connect or to wait for a reply (the tail waits ``block_ms`` longer).
        clock: wall-clock seconds, for the age bound (injectable for tests).
        schema_of: the schema of a class, given to the changes read from Redis (records carry none).
        node: this node's name (for its wake key and logs); random by default.
        store: the bounds of each class's document store (:mod:`.store`; every node should use the same).
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "xia:",
                 max_count: int | None = DEFAULT_MAX_COUNT, max_age: float | None = DEFAULT_MAX_AGE,
                 exact_trim: bool = False, block_ms: int = 2000, read_count: int = 512, backoff_min: float = 0.05,
                 backoff_max: float = 5.0, timeout: float = 5.0, clock: Callable[[], float] = time.time,
                 schema_of: Callable[[str], DocSchema | None] | None = None, node: str | None = None,
                 store: StoreBounds | None = None) -> None:
        aioredis = _import_redis()
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.prefix = prefix
        self.max_count = max_count
        self.max_age = max_age
        self.exact_trim = exact_trim
        self.block_ms = block_ms
        self.read_count = read_count
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.node = node or secrets.token_hex(6)
        self.store = store if store is not None else StoreBounds()
        self._clock = clock
        self._schema_of = schema_of
        # no retries inside redis-py: a retried XADD could append a change twice; failures surface here
        no_retry = Retry(NoBackoff(), 0)
        self._timeout = timeout
        self._no_retry = no_retry
        self._redis: Redis = self._client()
        self._tail_redis: Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout + block_ms / 1000, socket_connect_timeout=timeout, retry=no_retry,
            single_connection_client=True)
        self._publish = self._redis.register_script(_PUBLISH)
        self._read = self._redis.register_script(_READ)
        self._documents = self._redis.register_script(_DOCUMENTS)
        self._ensure = self._redis.register_script(_ENSURE)
        #: closes the client replaced after a reconnection, once its commands in flight are done
        self._retiring: asyncio.Task[None] | None = None
        #: the tail has read from Redis at least once (a later first read follows a reconnection)
        self._has_read = False
        #: the current outage was logged (a line when Redis becomes unreachable, none for each retry)
        self._outage_logged = False
        self._tail_read = self._tail_redis.register_script(_READ)
        self._wake_key = f"{prefix}wake:{self.node}"
        self._on_change: OnChange | None = None
        self._tail_task: asyncio.Task[None] | None = None
        self._closed = False
        self._watch_lock = asyncio.Lock()
        #: per watched class: the id of the last entry the tail took (the next read starts after it)
        self._cursors: dict[str, str] = {}
        #: per watched class: the position of the last change delivered (or where watching began)
        self._delivered: dict[str, Position] = {}
        #: the tail must check every watched class's epoch before reading again (after a reconnection)
        self._resync = False
        #: a watch woke the tail and it has not begun its next read: later watches need not wake it again (a
        #: burst of new classes costs one new blocking read, not one per class over every watched stream)
        self._wake_pending = False
        #: when a watch last woke the tail (monotonic seconds)
        self._last_wake = 0.0
        self.ready = False

    # -- keys --

    def stream_key(self, class_name: str) -> str:
        return f"{self.prefix}stream:{class_name}"

    def meta_key(self, class_name: str) -> str:
        return f"{self.prefix}meta:{class_name}"

    def docs_key(self, class_name: str) -> str:
        return f"{self.prefix}docs:{class_name}"

    # -- lifecycle --

    async def start(self, on_change: OnChange) -> None:
        """Start the tail task; it connects in the background (``ready`` turns True once it reads)."""
        self._on_change = on_change
        if self._tail_task is None:
            self._tail_task = asyncio.get_running_loop().create_task(self._tail(), name="xia-redis-tail")

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``ready``. Returns it."""
        deadline = time.monotonic() + timeout
        while not self.ready and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.ready

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ready = False
        if self._tail_task is not None:
            self._tail_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._tail_task
        self.ready = False  # again: a read that completed as the task was cancelled may have set it
        with contextlib.suppress(Exception):
            await self._redis.delete(self._wake_key)
        if self._retiring is not None:
            self._retiring.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._retiring
        await self._tail_redis.aclose()
        await self._redis.aclose()

    # -- publishing and reading --

    async def publish(self, change: Change) -> Position:
        if self._closed:
            raise BackendUnavailable("the Redis backend is closed")
        record = change.to_record(with_seq=False)  # ChangeNotSerialisable for a doc-only change
        entry_id = ""
        if change.seq:
            entry_id = id_of_seq(change.seq) or ""
            if not entry_id:
                raise SeqOrderError(f"{change.class_name}: seq {change.seq!r} is not a stream seq "
                                    "(13-digit ms, '-', 10-digit counter)")
        minid = ""
        if self.max_age is not None:
            minid = str(max(0, int((self._clock() - self.max_age) * 1000)))
        args: list[bytes | str] = [secrets.token_hex(4), record, entry_id,
                                   "" if self.max_count is None else str(self.max_count),
                                   "0" if self.exact_trim else "1", minid, doc_key(change.doc_id), change.op,
                                   "1" if change.prev is not None else "0", str(self.store.max_documents),
                                   str(self.store.max_bytes),
                                   b"" if change.prev is None else change.stored_record(record)]
        name = change.class_name
        try:
            added, epoch = await self._publish(keys=[self.stream_key(name), self.meta_key(name),
                                                     self.docs_key(name)], args=args)
        except _redis_errors() as exc:
            raise BackendUnavailable(f"cannot publish {change.class_name} to Redis at {self.url}: {exc}") from exc
        except _refusals() as exc:
            # Redis answers but will not write (maxmemory reached with noeviction, a read-only replica)
            raise BackendUnavailable(f"Redis at {self.url} refused to publish {change.class_name}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            text = str(exc)
            if "equal or smaller" in text or "XIASEQ" in text:
                raise SeqOrderError(f"{change.class_name}: seq {change.seq!r} is not after the stream's "
                                    f"last entry or is before its epoch ({text})") from None
            raise
        change.seq = seq_of_id(added)
        change.epoch = epoch.decode()
        return Position(change.seq, change.epoch)

    async def _snapshot(self, class_name: str, start: str, count: int,
                        script: Any = None) -> _Snapshot:
        """Run the read script: one consistent view of a class's epoch, trim state and entries."""
        try:
            epoch, last, trimmed, first, entries = await (script or self._read)(
                keys=[self.stream_key(class_name), self.meta_key(class_name), self.docs_key(class_name)],
                args=[secrets.token_hex(4), start, count])
        except _redis_errors() as exc:
            raise BackendUnavailable(f"cannot read {class_name} from Redis at {self.url}: {exc}") from exc
        return _Snapshot(epoch.decode(), last.decode(), trimmed.decode(), first.decode(), entries)

    async def read(self, class_name: str, seq: str | None, *, inclusive: bool, limit: int,
                   epoch: str | None = None) -> list[Change]:
        # the position of a class nobody had published yet: ("", ""); from it, everything is read
        seq, epoch = seq or None, epoch or None
        if seq is None:
            start = "-"
        else:
            entry_id = id_of_seq(seq)
            if entry_id is None:
                raise HistoryGone(class_name, None, reason=f"{seq!r} is not a seq of this journal")
            start = entry_id if inclusive else f"({entry_id}"
        snap = await self._snapshot(class_name, start, limit)
        current = snap.epoch
        oldest = seq_of_id(snap.first) if snap.first else None
        if not current:  # nothing was ever published in the class (or Redis came back empty)
            if seq is not None or epoch is not None:
                raise HistoryGone(class_name, None, reason="the journal holds nothing of the class")
            return []
        if epoch is not None and epoch != current:
            raise HistoryGone(class_name, oldest, epoch=current, reason=f"epoch {epoch!r} is not the journal's")
        if seq is not None and seq < _epoch_start(current):
            raise HistoryGone(class_name, oldest, epoch=current, reason="before the journal's epoch")
        head = seq_of_id(snap.last) if snap.last else _epoch_start(current)
        if seq is not None and seq > head:
            # no position of this epoch lies there (a position from a store that started again, or made up):
            # going live from it would skip every change up to it
            raise HistoryGone(class_name, oldest, epoch=current, reason="after the journal's head")
        if snap.trimmed:
            last_trimmed = seq_of_id(snap.trimmed)
            if seq is None or last_trimmed > seq or (inclusive and last_trimmed == seq):
                raise HistoryGone(class_name, oldest, epoch=current, reason="trimmed")
        # a script's reply gives an entry's fields as a flat [name, value, ...] list
        return [self._change(class_name, entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))
                for entry_id, flat in snap.entries]

    async def position(self, class_name: str) -> Position:
        snap = await self._snapshot(class_name, "-", 0)
        return _position(snap.epoch, snap.last)

    async def epoch(self, class_name: str) -> str:
        return (await self.position(class_name)).epoch

    def _change(self, class_name: str, entry_id: bytes, fields: dict[bytes, bytes]) -> Change:
        schema = self._schema_of(class_name) if self._schema_of is not None else None
        return Change.from_record(fields[b"r"], seq=seq_of_id(entry_id), epoch=fields[b"e"].decode(),
                                  schema=schema, stored_prev=fields.get(b"v"))

    async def snapshot(self, class_name: str) -> Snapshot:
        snap = await self._snapshot(class_name, "-", 0)  # the position: every change up to it is stored
        return _RedisSnapshot(self, class_name, _position(snap.epoch, snap.last))

    async def _documents_page(self, class_name: str, cursor: str, count: int) -> tuple[str, str, str, list[Any]]:
        try:
            epoch, refused, after, flat = await self._documents(
                keys=[self.meta_key(class_name), self.docs_key(class_name)], args=[cursor, count])
        except _redis_errors() as exc:
            raise BackendUnavailable(f"cannot read {class_name} from Redis at {self.url}: {exc}") from exc
        return epoch.decode(), refused.decode(), after.decode(), flat

    # -- tailing --

    async def watch(self, class_name: str, *, create: bool = True) -> Position:
        async with self._watch_lock:  # one registration per class: two would race for the cursor
            delivered = self._delivered.get(class_name)
            if delivered is not None:
                return delivered
            snap = await self._snapshot(class_name, "-", 0, self._ensure if create else None)
            position = _position(snap.epoch, snap.last)
            self._cursors[class_name] = snap.last or "0-0"
            self._delivered[class_name] = position
        if self._wake_pending:  # the tail has been woken and not yet read again: it will read this class too
            return position
        self._wake_pending = True
        with contextlib.suppress(*_redis_errors()):  # the tail wakes up by itself after block_ms anyway
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.expire(self._wake_key, 86_400)  # a node that died without close() leaves it a day
                await pipe.execute()
        return position

    async def _warn_about_config(self) -> None:
        """Warn (once, when first connected) when Redis could lose what the journal holds: no persistence (a
        restart of Redis empties it: every class gets a new epoch), or an eviction policy that may drop
        streams (a silent gap). ``CONFIG`` may be disabled: then nothing is said."""
        try:
            config = await self._redis.config_get("appendonly")
            config.update(await self._redis.config_get("save"))
            config.update(await self._redis.config_get("maxmemory-policy"))
        except Exception:  # CONFIG renamed or refused: nothing to check
            return
        text = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in config.items()}
        if text.get("appendonly") == "no" and not text.get("save"):
            log.warning("Redis at %s keeps nothing on disk (appendonly no, no save points): a restart of Redis "
                        "loses every retained change and starts new epochs; run it with --appendonly yes "
                        "(docs/cluster.md)", self.url)
        policy = str(text.get("maxmemory-policy") or "")
        if policy.startswith("allkeys-"):
            log.warning("Redis at %s evicts any key under memory pressure (maxmemory-policy %s): streams could "
                        "lose changes silently; use noeviction (docs/cluster.md)", self.url, policy)

    def unwatch(self, class_name: str) -> None:
        self._cursors.pop(class_name, None)
        self._delivered.pop(class_name, None)

    def watched(self) -> list[str]:
        """The classes this node tails."""
        return list(self._cursors)

    async def _tail(self) -> None:
        """The one tail loop: a blocking XREAD over the wake stream and every watched stream, forever;
        reconnects with backoff on any connection error."""
        delay = self.backoff_min
        # from the start of this node's own wake stream (one entry at most): a watch() that woke it before the
        # first read must not be missed ("$" would skip it, and the read would sleep block_ms)
        wake_cursor = "0-0"
        while not self._closed:
            try:
                if self._resync:
                    await self._check_epochs()
                    self._resync = False
                self._wake_pending = False  # a class watched from here on is in this read, or wakes it
                streams: dict[Any, Any] = {self._wake_key: wake_cursor}
                classes = {self.stream_key(c): c for c in self._cursors}
                for key, c in classes.items():
                    streams[key] = self._cursors[c]
                reply: Any = await self._tail_redis.xread(streams, count=self.read_count, block=self.block_ms)
                if not self.ready:
                    log.info("tailing Redis at %s (%d classes)", self.url, len(classes))
                    if self._has_read:
                        self._renew_client()
                    else:
                        await self._warn_about_config()
                    self._has_read = True
                self.ready = not self._closed
                self._outage_logged = False
                delay = self.backoff_min
                woken = False
                for key, entries in reply or ():
                    key_text = key.decode()
                    if key_text == self._wake_key:
                        wake_cursor = entries[-1][0].decode()
                        woken = True
                        continue
                    class_name = classes.get(key_text)
                    if class_name is not None:
                        self._deliver(class_name, entries)
                if woken:
                    # new classes to tail: in a burst of them (a reconnection storm), gather a few before the
                    # next read, whose every call names every watched stream
                    now = time.monotonic()
                    if now - self._last_wake < 5 * WAKE_GATHER:
                        await asyncio.sleep(WAKE_GATHER)
                    self._last_wake = now
            except asyncio.CancelledError:
                raise
            except _redis_errors() as exc:
                if not self._outage_logged:  # once per outage, the first one at startup included
                    self._outage_logged = True
                    log.warning("Redis at %s unreachable, retrying: %s", self.url, exc)
                self.ready = False
                self._resync = True
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, self.backoff_max)
            except Exception:
                log.exception("unexpected error while tailing Redis at %s", self.url)
                self.ready = False
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, self.backoff_max)

    def _client(self) -> Redis:
        """A client for publishing and reading (a pool of connections)."""
        client: Redis = _import_redis().Redis.from_url(self.url, socket_timeout=self._timeout,
                                                       socket_connect_timeout=self._timeout,
                                                       retry=self._no_retry)
        return client

    def _renew_client(self) -> None:
        """After a reconnection, publish and read on a new client: the pooled connections of the old one may
        predate a restart of Redis, and the first publish after it would fail on one the old server closed.
        The old pool is not disconnected in place (a command may be taking one of its connections at that
        moment, redis-py's ``disconnect`` does not exclude it); the old client is closed ``timeout`` seconds
        later, when whatever it was doing has answered or timed out."""
        old, self._redis = self._redis, self._client()
        self._publish = self._redis.register_script(_PUBLISH)
        self._read = self._redis.register_script(_READ)
        self._documents = self._redis.register_script(_DOCUMENTS)
        self._ensure = self._redis.register_script(_ENSURE)
        if self._retiring is not None:  # at most one retired client: the one before goes now
            self._retiring.cancel()
        self._retiring = asyncio.get_running_loop().create_task(self._close_retired(old, self._timeout))

    async def _close_retired(self, client: Redis, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            if self._retiring is asyncio.current_task():
                self._retiring = None
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _check_epochs(self) -> None:
        """After a reconnection: a class whose epoch changed (Redis came back empty) is read from the
        start of its new epoch."""
        for class_name in list(self._cursors):
            current = (await self._snapshot(class_name, "-", 0, self._tail_read)).epoch
            known = self._delivered.get(class_name)
            if known is not None and known.epoch != current and class_name in self._cursors:
                if known.epoch:
                    log.warning("%s: Redis holds a new epoch %s (was %s): history before it is gone",
                                class_name, current or "(none yet)", known.epoch)
                self._cursors[class_name] = "0-0"
                self._delivered[class_name] = _position(current, "")

    def _deliver(self, class_name: str, entries: list[Any]) -> None:
        """Hand a class's new entries to ``on_change`` in order; an entry at or before the last delivered
        seq of the same epoch is never handed twice."""
        for entry_id, fields in entries:
            if class_name not in self._cursors:
                return  # unwatched while the read was in flight
            self._cursors[class_name] = entry_id.decode()
            try:
                change = self._change(class_name, entry_id, fields)
            except (BadChangeRecord, KeyError) as exc:
                log.error("%s: skipping entry %s, not a change record: %s", class_name, entry_id, exc)
                continue
            last = self._delivered.get(class_name)
            if last is not None and last.epoch == change.epoch and change.seq <= last.seq:
                continue
            self._delivered[class_name] = Position(change.seq, change.epoch)
            if self._on_change is not None:
                try:
                    self._on_change(change)
                except Exception:
                    log.exception("%s: on_change failed for seq %s", class_name, change.seq)


async def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` in the Redis at ``url`` (a deployment's streams, epochs and wake
    keys: retiring it, or cleaning up after tests and benchmarks). Returns how many keys were deleted."""
    client = _import_redis().Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        return len(keys)
    finally:
        await client.aclose()


def _redis_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean "Redis cannot be reached" (BusyLoadingError, Redis loading its data, is one)."""
    from redis.exceptions import ConnectionError, TimeoutError

    return (ConnectionError, TimeoutError, OSError)


def _refusals() -> tuple[type[BaseException], ...]:
    """The errors of a Redis that answers but refuses to write (as redis-py names them)."""
    import redis.exceptions

    names = ("OutOfMemoryError", "ReadOnlyError")
    return tuple(getattr(redis.exceptions, n) for n in names if hasattr(redis.exceptions, n))


def _epoch_start(epoch: str) -> str:
    """The seq before the first change of an epoch ``<13-digit ms>-<token>``."""
    return format_seq(int(epoch[:13]), 0)


def _position(epoch: str, last_id: str) -> Position:
    """A class's head: ("", "") for a class without an epoch yet (nothing published)."""
    if not epoch:
        return Position("", "")
    start = _epoch_start(epoch)
    head = seq_of_id(last_id) if last_id and last_id != "0-0" else start
    return Position(max(head, start), epoch)


class _RedisSnapshot(Snapshot):
    """The store of one class read with ``HSCAN``, a page per script call (each page checked against the
    epoch and the store's state); documents changed after ``position`` are left out (the journal brings
    them), and a document ``HSCAN`` returns twice is given once."""

    def __init__(self, backend: RedisBackend, class_name: str, position: Position) -> None:
        self.backend = backend
        self.class_name = class_name
        self.position = position
        self._cursor = "0"
        self._done = False
        self._seen: set[bytes] = set()
        #: documents read but not returned yet (``HSCAN``'s count is a hint: a page may hold more)
        self._ahead: list[Change] = []

    async def next(self, limit: int) -> list[Change]:
        if not self._ahead:
            self._ahead = await self._read(limit)
        page, self._ahead = self._ahead[:limit], self._ahead[limit:]
        return page

    async def _read(self, limit: int) -> list[Change]:
        name, position = self.class_name, self.position
        while not self._done:
            epoch, refused, self._cursor, flat = await self.backend._documents_page(name, self._cursor, limit)
            self._done = self._cursor == "0"
            if position.epoch and epoch != position.epoch:  # none at the position: a first publish may make it
                raise HistoryGone(name, None, epoch=epoch, reason="the class's epoch changed")
            if refused:
                raise SnapshotRefused(name, refused)
            page: list[Change] = []
            seen = self._seen
            for key, value in zip(flat[::2], flat[1::2], strict=True):
                entry_id, _, record = value.partition(b" ")
                seq = seq_of_id(entry_id)
                if seq > position.seq or key in seen:
                    continue
                seen.add(key)
                document = stored_document(name, key.decode(errors="replace"), seq, record, epoch)
                if document is not None:
                    page.append(document)
            if page:
                return page
        return []


class _Snapshot(NamedTuple):
    """What the read script saw of a class: ids are stream ids ("" when none)."""

    epoch: str
    last: str  # last generated id (survives trimming)
    trimmed: str  # the newest entry trimming removed
    first: str  # first entry still held
    entries: list[Any]
