"""The ``listen`` and ``publish`` subcommands of ``xia-broadcast``.

``xia-broadcast listen URL --class Order [--scope JSON] [--catalog JSON] [--show-hidden] [--after SEQ]
[--snapshot [--epoch E]] [--api-key K --app-name A | --token T] [--count N] [--max-retries N]
[--connect-attempts N] [--no-strict]`` prints one JSON line per message (document messages and control
messages, as the server sends them) on stdout until interrupted; connection notices (connecting, connected,
resumed, each retry with its reason and delay) go to stderr. The subscription is checked strictly by the
server unless ``--no-strict``: a scope field or catalog name the class does not declare is refused (exit 3,
the server's reason naming it). With ``--snapshot`` it first prints the current documents of the class (one
``I`` line each, as they stand at the snapshot's position), then the ``snapshot_done`` line, then the
changes. Exit codes: 0 interrupted (SIGINT/SIGTERM), ``--count`` messages printed, or stdout closed by its
reader; 2 bad arguments; 3 refused by the server (close code and reason on stderr); 4 gave up after
``--max-retries`` consecutive failed attempts; 5 the server was never reached in ``--connect-attempts``
attempts (default 5).

``xia-broadcast publish URL --class Order --op I --doc JSON [--previous JSON] [--key K]`` publishes one
change and prints its seq; ``--file changes.jsonl`` publishes one change object per line
(``{"class", "op", "doc", "previous"?}``; ``--class``/``--op`` fill in missing keys), ``--batch N`` per
request (a refused batch applies none of its changes), with a progress bar on stderr and a summary of what
was accepted and refused, and why. Exit codes: 0 all accepted; 1 some refused; 2 bad arguments or an
unreadable file; 3 the server could not be reached (the summary says how far it got).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from .backoff import Backoff
from .listener import ABNORMAL_CLOSURE, GaveUp, Listener, Refused, Unreachable
from .messages import Connected, DocumentMessage, Exit, Reconnecting, Reset, SnapshotDone
from .publisher import Publisher, PublishRefused

EXIT_OK = 0
EXIT_REFUSED_CHANGES = 1
EXIT_USAGE = 2
EXIT_SERVER = 3
EXIT_GAVE_UP = 4
EXIT_UNREACHABLE = 5
#: attempts ``listen`` makes to reach a server it has never reached before it gives up (exit 5)
CONNECT_ATTEMPTS = 5


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def add_parsers(sub: Any) -> None:
    """Add ``listen`` and ``publish`` to the subparsers of the ``xia-broadcast`` command."""
    p = sub.add_parser("listen", help="print the changes of a class as JSON lines, reconnecting and resuming",
                       description="Subscribe to a class and print one JSON line per message until interrupted.",
                       epilog="exit codes: 0 interrupted, --count reached or stdout closed; 2 bad arguments; "
                              "3 refused by the server; 4 gave up after --max-retries; 5 the server was never "
                              "reached in --connect-attempts attempts")
    p.add_argument("url", help="the server's WebSocket URL, e.g. ws://127.0.0.1:8765/ws")
    p.add_argument("--class", dest="cls", required=True, help="document class to subscribe to")
    p.add_argument("--scope", type=_json_arg, help='data scope, e.g. \'[{"fn": "region", "op": "==", "val": "EU"}]\'')
    p.add_argument("--catalog", type=_json_arg, help='catalog, e.g. \'{"order_id": null, "amount": null}\'')
    p.add_argument("--show-hidden", action="store_true", help="ask for hidden fields too")
    p.add_argument("--after", metavar="SEQ", help="replay what was published after this seq, then go live")
    p.add_argument("--snapshot", action="store_true",
                   help="first print the current documents of the class (one I line each), then a snapshot_done "
                        "line, then the changes; after a drop, resume from the last change (a reset line, then "
                        "the documents again, when the server no longer holds it)")
    p.add_argument("--epoch", help="with --snapshot --after SEQ: the epoch of that position (a snapshot_done line's)")
    p.add_argument("--api-key", help="API key (sent in _header as X-Api-Key)")
    p.add_argument("--app-name", help="application name (sent in _header as X-App-Name)")
    p.add_argument("--token", help="JWT (sent in _header as Authorization: Bearer)")
    p.add_argument("--count", type=int, metavar="N", help="exit after N document messages")
    p.add_argument("--max-retries", type=int, metavar="N",
                   help="give up (exit 4) after N consecutive failed attempts (default: retry forever)")
    p.add_argument("--connect-attempts", type=int, default=CONNECT_ATTEMPTS, metavar="N",
                   help="give up (exit 5) when the first N attempts all fail to reach the server (nothing "
                        f"listening, an unknown host; default {CONNECT_ATTEMPTS}; 0: keep trying); once the "
                        "server has been reached, only --max-retries limits the retries")
    p.add_argument("--strict", action=argparse.BooleanOptionalAction, default=True,
                   help="ask the server to refuse a scope field, catalog name or subscription key the class "
                        "does not declare (default: on); --no-strict sends the subscription as the original "
                        "listener would (such a name then matches nothing)")
    p.add_argument("--max-delay", type=float, default=30.0, metavar="SECONDS",
                   help="longest wait between two attempts (default 30)")
    p.set_defaults(run=run_listen)

    q = sub.add_parser("publish", help="publish changes over HTTP (POST /publish)",
                       description="Publish one change (--doc) or one change per line of a file (--file).",
                       epilog="exit codes: 0 all accepted; 1 some refused; 2 bad arguments or unreadable file; "
                              "3 server unreachable")
    q.add_argument("url", help="the server's HTTP base, e.g. http://127.0.0.1:8765")
    q.add_argument("--class", dest="cls", help="document class (default for the lines of --file)")
    q.add_argument("--op", choices=["I", "U", "D"], help="I insert, U update, D delete (default for --file lines)")
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument("--doc", type=_json_arg, help="the document, as JSON")
    what.add_argument("--file", help="a JSON-lines file of change objects ('-': standard input)")
    q.add_argument("--previous", type=_json_arg, help="the document before the change, as JSON (with --doc)")
    q.add_argument("--key", help="publisher key (sent as X-Publisher-Key)")
    q.add_argument("--batch", type=int, default=1, metavar="N", help="changes per request with --file (default 1)")
    q.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                   help="progress bar on stderr: auto shows it when stderr is a terminal")
    q.set_defaults(run=run_publish)


def _say(text: str) -> None:
    print(f"xia-broadcast: {text}", file=sys.stderr, flush=True)


def printable(text: str) -> str:
    """What a server sent (a close reason), with control characters escaped: a server's text never reaches
    the terminal as escape sequences or line breaks."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# -- listen -------------------------------------------------------------------------------------------------


def run_listen(args: argparse.Namespace) -> int:
    if args.token and (args.api_key or args.app_name):
        _say("give --api-key/--app-name or --token, not both")
        return EXIT_USAGE
    sub: dict[str, Any] = {}
    if args.scope is not None:
        sub["data_scope"] = args.scope
    if args.catalog is not None:
        sub["catalog"] = args.catalog
    if args.show_hidden:
        sub["show_hidden"] = True
    if args.after:
        sub["after_seq"] = args.after
    if args.epoch:
        if not (args.snapshot and args.after):
            _say("--epoch goes with --snapshot --after SEQ")
            return EXIT_USAGE
        sub["epoch"] = args.epoch
    if args.connect_attempts < 0:
        _say("--connect-attempts must be 0 (keep trying) or more")
        return EXIT_USAGE
    try:
        listener = Listener(args.url, {args.cls: sub}, api_key=args.api_key, app_name=args.app_name,
                            token=args.token, max_retries=args.max_retries,
                            backoff=Backoff(max_delay=args.max_delay), snapshot=args.snapshot,
                            strict=args.strict, connect_attempts=args.connect_attempts or None)
    except ValueError as exc:
        _say(str(exc))
        return EXIT_USAGE
    snapshot = args.snapshot and not args.after  # with --after the reader holds the documents already
    try:
        return asyncio.run(_listen(listener, args.count, sys.stdout, snapshot=snapshot))
    except KeyboardInterrupt:  # a SIGINT before _listen took the signals over, or after it gave them back
        return EXIT_OK


async def _listen(listener: Listener, count: int | None, out: TextIO, *, snapshot: bool = False) -> int:
    """Print what ``listener`` yields. ``snapshot``: a snapshot is under way first; its documents (and the
    changes made while it is read) are held and printed as they stand at ``snapshot_done``, one ``I`` line
    per document, so that the reader sees the current documents, then the changes."""
    loop = asyncio.get_running_loop()
    interrupts = 0
    closing: list[asyncio.Task[None]] = []  # a reference to the close task, held while it runs

    def interrupt() -> None:
        """The first SIGINT/SIGTERM closes the listener (the iteration ends, exit 0); a second one exits at
        once, should the close wait on a server that does not answer (every line printed is flushed)."""
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            closing.append(loop.create_task(listener.close()))
        else:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os._exit(EXIT_OK)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    printed = 0
    connected = False  # some connection was confirmed: a retry is a reconnection
    #: the documents of the snapshot under way (by _id), while ``snapshot`` is true
    held: dict[Any, DocumentMessage] = {}

    def show(message: dict[str, Any], document: bool) -> bool:
        """Print one line; True when ``--count`` is reached."""
        nonlocal printed
        out.write(json.dumps(message, ensure_ascii=False) + "\n")
        out.flush()
        if document:
            printed += 1
            return count is not None and printed >= count
        return False

    try:
        _say(f"connecting to {listener.url}")
        async for event in listener:
            if isinstance(event, Connected):
                connected = True
                resumed = ", ".join(f"{c} after {s}" for c, s in event.resumed.items())
                _say(f"connected to {listener.url}" + (f" (resuming {resumed})" if resumed else ""))
            elif isinstance(event, Reconnecting):
                _say(f"{_retry_reason(listener, event)}; {'reconnecting' if connected else 'retrying'} in "
                     f"{event.delay:.1f} s")
            elif snapshot and isinstance(event, DocumentMessage | Exit):
                if isinstance(event, DocumentMessage) and event.op != "D":
                    held[event.id] = event
                else:
                    held.pop(event.id, None)
            elif snapshot and isinstance(event, Reset):
                held.clear()  # nothing of this snapshot was printed: the fresh one that follows is held too
            elif snapshot and isinstance(event, SnapshotDone):
                snapshot = False
                documents = [DocumentMessage(m.doc_class, "I", m.seq, m.message) for m in held.values()]
                held.clear()
                if any(show(m.to_wire(), True) for m in documents):
                    break
                show(event.to_wire(), False)
            else:
                if isinstance(event, Reset):  # the reader drops the documents printed; they are printed again
                    snapshot = True
                if show(event.to_wire(), isinstance(event, DocumentMessage | Exit)):
                    break
    except Refused as exc:
        hint = ""
        if listener.strict and "has no field" in exc.reason:
            hint = " (strict checking, the default: --no-strict lets names the class does not declare through)"
        _say(f"refused by the server: {exc.code} {printable(exc.reason)}{hint}")
        return EXIT_SERVER
    except Unreachable as exc:
        _say(f"gave up: {listener.url} was never reached in {exc.failures} attempts (last: "
             f"{printable(_connect_reason(exc.reason))}); is the server running at that address? "
             "(--connect-attempts sets how many attempts)")
        return EXIT_UNREACHABLE
    except GaveUp as exc:
        _say(printable(str(exc)))
        return EXIT_GAVE_UP
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return EXIT_OK
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(listener.close(), 2.0)
    return EXIT_OK


def _connect_reason(reason: str) -> str:
    return reason.removeprefix("cannot connect: ")


def _retry_reason(listener: Listener, event: Reconnecting) -> str:
    """Why ``listen`` retries, in words: the server not reached (and how many attempts are left), a
    connection lost, or closed by the server with a code and reason."""
    if not event.reached:
        attempt = f"attempt {event.failures}"
        if not listener.reached and listener.connect_attempts is not None:
            attempt += f" of {listener.connect_attempts}"
        return f"cannot connect to {listener.url}: {printable(_connect_reason(event.reason))} ({attempt})"
    if event.code == ABNORMAL_CLOSURE:  # no close frame
        if event.reason == "connection lost":
            return "connection lost"
        return f"connection lost: {printable(event.reason)}"
    return f"connection closed by the server with code {event.code}" + (
        f" ({printable(event.reason)})" if event.reason else "")


# -- publish ------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What happened to the changes of a ``publish --file`` run."""

    total: int | None
    accepted: int = 0
    refused: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.accepted + self.refused

    def refuse(self, lines: str, error: str, message: str, n: int = 1) -> None:
        self.refused += n
        self.reasons[error] += n
        if len(self.examples) < 10:
            self.examples.append(f"{lines}: {error}: {message}")

    def summary(self) -> str:
        text = f"accepted {self.accepted}, refused {self.refused}"
        if self.total is not None and self.done < self.total:
            text += f", not sent {self.total - self.done}"
        if self.reasons:
            text += " (" + ", ".join(f"{e}: {n}" for e, n in self.reasons.most_common()) + ")"
        return "\n".join([text, *(f"  {e}" for e in self.examples)])


class ProgressBar:
    """A one-line text progress bar on a stream, redrawn at most every ``interval`` seconds."""

    def __init__(self, stream: TextIO, enabled: bool, width: int = 30, interval: float = 0.1) -> None:
        self.stream, self.enabled, self.width, self.interval = stream, enabled, width, interval
        self._last = 0.0

    def update(self, tally: Tally, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._last < self.interval):
            return
        self._last = now
        if tally.total:
            filled = self.width * tally.done // tally.total
            bar = f"[{'#' * filled}{'.' * (self.width - filled)}] {tally.done}/{tally.total}"
        else:
            bar = f"{tally.done} sent"
        self.stream.write(f"\r{bar}  accepted {tally.accepted}  refused {tally.refused}")
        if final:
            self.stream.write("\n")
        self.stream.flush()


def run_publish(args: argparse.Namespace) -> int:
    try:
        publisher = Publisher(args.url, key=args.key)
    except ValueError as exc:
        _say(str(exc))
        return EXIT_USAGE
    if args.previous is not None and args.doc is None:
        _say("--previous goes with --doc (a line of --file carries its own \"previous\")")
        return EXIT_USAGE
    with publisher:
        if args.doc is not None:
            return _publish_one(publisher, args)
        return _publish_file(publisher, args)


def _publish_one(publisher: Publisher, args: argparse.Namespace) -> int:
    if not args.cls or not args.op:
        _say("--doc needs --class and --op")
        return EXIT_USAGE
    if not isinstance(args.doc, dict):
        _say("--doc must be a JSON object")
        return EXIT_USAGE
    try:
        seq = publisher.publish(args.cls, args.op, args.doc, args.previous)
    except PublishRefused as exc:
        _say(f"refused: {exc}")
        return EXIT_REFUSED_CHANGES
    except OSError as exc:
        _say(f"cannot reach {args.url}: {exc}")
        return EXIT_SERVER
    print(seq, flush=True)
    return EXIT_OK


def _read_lines(path: str) -> list[str]:
    if path == "-":
        return sys.stdin.read().splitlines()
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def _publish_file(publisher: Publisher, args: argparse.Namespace) -> int:
    if args.batch < 1:
        _say("--batch must be at least 1")
        return EXIT_USAGE
    try:
        lines = _read_lines(args.file)
    except OSError as exc:
        _say(f"cannot read {args.file}: {exc}")
        return EXIT_USAGE
    numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    tally = Tally(total=len(numbered))
    bar = ProgressBar(sys.stderr, args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty()))
    batch: list[tuple[int, dict[str, Any]]] = []
    try:
        for number, line in numbered:
            change = _change(line, args)
            if isinstance(change, str):
                tally.refuse(f"line {number}", "bad_line", change)
            else:
                batch.append((number, change))
                if len(batch) >= args.batch:
                    _send(publisher, batch, tally)
                    batch = []
            bar.update(tally)
        _send(publisher, batch, tally)
    except OSError as exc:
        bar.update(tally, final=True)
        _say(f"cannot reach {args.url}: {exc}")
        _say(tally.summary())
        return EXIT_SERVER
    bar.update(tally, final=True)
    _say(tally.summary())
    return EXIT_OK if tally.refused == 0 else EXIT_REFUSED_CHANGES


def _change(line: str, args: argparse.Namespace) -> dict[str, Any] | str:
    """The change object of a line, with ``--class``/``--op`` as defaults, or why it is not one."""
    try:
        change = json.loads(line)
    except ValueError as exc:
        return f"not JSON: {exc}"
    if not isinstance(change, dict):
        return "not a JSON object"
    if args.cls and "class" not in change:
        change["class"] = args.cls
    if args.op and "op" not in change:
        change["op"] = args.op
    return change


def _send(publisher: Publisher, batch: Iterable[tuple[int, dict[str, Any]]], tally: Tally) -> None:
    items = list(batch)
    if not items:
        return
    try:
        publisher.send([c for _, c in items])
    except PublishRefused as exc:
        first, last = items[0][0], items[-1][0]
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        tally.refuse(where, exc.error, exc.message, n=len(items))
        return
    tally.accepted += len(items)
