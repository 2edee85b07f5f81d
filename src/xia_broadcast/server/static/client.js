/**
 * xia-broadcast browser client: a dependency-free ES module (served by the server at /client.js).
 *
 *   import { Listener, Collection } from "/client.js";
 *   const orders = new Collection("Order", { onChange: (kind, id, doc, prev) => render(kind, id, doc) });
 *   const listener = new Listener("ws", { Order: { data_scope: [{ fn: "region", op: "==", val: "EU" }] } }, {
 *     onMessage: (msg) => orders.handle(msg),
 *     onControl: (msg) => orders.handle(msg),
 *     onState: (state, detail) => console.log(state, detail),
 *   }).start();
 *
 * The Listener sends the handshake of docs/protocol.md with `_options: {control: true, strict: true}` (so it
 * receives exits, `replay_done` and `history_gone`, and a scope field or catalog name the class does not
 * declare is refused at once, state "refused" with the server's reason, rather than matching nothing; option
 * `strict: false` sends `{control: true}` only, the original's leniency), keeps the last seq of every class (the `after_seq` asked, else
 * the confirmation's `head_seq`, until a message arrives), and after any drop reconnects with exponential
 * backoff and full jitter, resuming with `after_seq`: nothing is lost or repeated. A `start_seq` in a
 * subscription keeps its original meaning, a filter (messages before it are not delivered): the Listener
 * applies it itself and never sends it. Close codes that mean "refused as it is" end it
 * (state "refused") instead of retrying. A Collection keeps the documents of one class by `_id` and applies
 * inserts, updates, deletes and exits; on `history_gone` it reloads (by default: clears).
 *
 * Snapshots: a subscription with `snapshot: true` is first sent every current document of its view, then
 * `snapshot_done`; the Listener resumes it with `after_seq` and `epoch` only after that, starts a fresh
 * snapshot when a connection dropped before it (handing the caller a `reset` first, so that the partial
 * collection is dropped), and passes on the server's `reset` (its position is gone: a fresh snapshot
 * follows). A Collection fed by it holds exactly the server's view from `snapshot_done` on (`complete`).
 *
 *   const orders = new Collection("Order", { onChange: render });
 *   new Listener("ws", { Order: { snapshot: true } }, {
 *     onMessage: (msg) => orders.handle(msg), onControl: (msg) => orders.handle(msg) }).start();
 */

/** Close codes after which reconnecting with the same request cannot succeed (docs/protocol.md, section 5). */
export const TERMINAL_CLOSE_CODES = new Set([1009, 4400, 4401, 4403, 4404, 4413, 4420, 4421, 4429]);

/**
 * Reconnection delays in seconds: after the n-th consecutive failure, uniform in
 * [0, min(maxDelay, initial * factor ** (n - 1))] ("full jitter").
 */
export class Backoff {
  constructor({ initial = 0.5, factor = 2, maxDelay = 30, random = Math.random } = {}) {
    this.initial = initial;
    this.factor = factor;
    this.maxDelay = maxDelay;
    this.random = random;
  }

  /** The largest delay after `failures` consecutive failures, in seconds. */
  bound(failures) {
    return Math.min(this.maxDelay, this.initial * this.factor ** Math.max(0, Math.min(64, failures - 1)));
  }

  /** A delay drawn with full jitter, in seconds. */
  delay(failures) {
    return this.random() * this.bound(failures);
  }
}

/** A ws:// or wss:// URL from an absolute URL or a path relative to the page ("ws", "/ws"). */
export function webSocketUrl(url) {
  const base = typeof location === "undefined" ? "ws://127.0.0.1:8765/" : location.href;
  const u = new URL(url, base);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  return u.href;
}

/**
 * Stays subscribed across drops. States: "idle", "connecting", "open", "reconnecting", "refused", "closed".
 *
 * subscriptions: {class: {data_scope, catalog, show_hidden, start_seq, after_seq, snapshot, epoch}}.
 *   `snapshot: true` asks for the current documents of the view first (then `snapshot_done`, then live
 *   changes); such a subscription takes no `start_seq`, and resumes from a saved position only with both
 *   `after_seq` and `epoch` (those of a `snapshot_done`, or of a change received after it).
 *
 * options:
 *   header      `_header` entries (e.g. {"X-App-Name": "shop", "X-Api-Key": "..."})
 *   token       a JWT, or a function (may be async) returning one: sent as `Authorization: Bearer` in
 *               `_header`; a function is called on every connection and for a refresh before expiry
 *   backoff     a Backoff, or its options ({initial, factor, maxDelay} in seconds)
 *   onMessage   (msg) => ..., every document message {doc_class, op: I|U|D|X, seq, message}
 *   onControl   (msg) => ..., every control message {_control: "replay_done"|"history_gone"|..., ...}
 *   onState     (state, detail) => ...; detail: {code, reason, delay, failures} when reconnecting or
 *               refused, {confirmation, resumed} when open
 *   openTimeout seconds from opening a connection to the server's confirmation (default 10); past it the
 *               connection is dropped and retried
 *   strict      ask the server for strict checking (default true): a scope field, catalog name or
 *               subscription key the class does not declare is refused (4400, 4420, 4421: state "refused",
 *               detail {code, reason} with the server's reason, e.g. "Order: Order has no field 'amout'");
 *               false: such a name is accepted and matches nothing, as with the original listener
 *   WebSocket   the WebSocket class to use (default: the global one)
 */
export class Listener {
  constructor(url, subscriptions, options = {}) {
    this.url = webSocketUrl(url);
    this.options = options;
    this.backoff = options.backoff instanceof Backoff ? options.backoff : new Backoff(options.backoff || {});
    this.state = "idle";
    this.failures = 0;
    this.connections = 0;
    this.duplicates = 0;
    this.confirmation = null;
    this._ws = null;
    this._timer = null;
    this._stopped = true;
    // snapshot classes whose caller may hold documents (or a completed snapshot): a fresh snapshot of them
    // is preceded by a `reset` handed to the caller
    this._holding = new Set();
    // snapshot classes receiving a snapshot on the current connection (their seqs are in no order)
    this._snapshotting = new Set();
    this._setSubscriptions(subscriptions, {});
  }

  /** Connect (and keep connecting); returns this listener. */
  start() {
    this._stopped = false;
    this._connect();
    return this;
  }

  /** Stop for good: the connection is closed and no reconnection follows. */
  close() {
    this._stopped = true;
    clearTimeout(this._timer);
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close(1000);
    this._setState("closed", {});
  }

  /**
   * Replace the subscriptions (e.g. another scope) and reconnect at once. Positions start over: `afterSeq`
   * (for every class) asks for a replay of what was published after it; without it the new subscriptions
   * are live from now on. A `snapshot: true` class takes a fresh snapshot (`afterSeq` does not apply to
   * it), preceded by a `reset` handed to `onControl` when its caller already holds documents of it.
   */
  resubscribe(subscriptions, { afterSeq } = {}) {
    this._setSubscriptions(subscriptions, { afterSeq });
    this.failures = 0;
    clearTimeout(this._timer);
    const ws = this._ws;
    this._ws = null; // its late events are ignored from here on
    if (ws) ws.close(1000);
    if (!this._stopped) this._connect();
  }

  /**
   * The first message of the next connection: resumes every class after its last seq when one is known (a
   * snapshot class: with its epoch, once a snapshot of it was complete; else it asks for a fresh snapshot).
   */
  async handshake() {
    const message = {};
    for (const [name, sub] of Object.entries(this.subscriptions)) {
      const request = { ...sub };
      if (sub.snapshot === true) {
        if (this.lastSeq[name] !== undefined && this.epoch[name]) {
          request.after_seq = this.lastSeq[name];
          request.epoch = this.epoch[name];
        }
      } else if (this.lastSeq[name] !== undefined) {
        request.after_seq = this.lastSeq[name];
        delete request.from_seq; // the position asked first is behind us: resume after the last seq seen
      }
      message[name] = request;
    }
    const header = { ...(this.options.header || {}) };
    if (this.options.token) header.Authorization = `Bearer ${await this._token()}`;
    if (Object.keys(header).length) message._header = header;
    message._options = this.options.strict === false ? { control: true } : { control: true, strict: true };
    return message;
  }

  _setSubscriptions(subscriptions, { afterSeq }) {
    this.subscriptions = {};
    this.lastSeq = {};
    this.startSeq = {};
    this.epoch = {}; // snapshot classes: the epoch of their position
    for (const [name, sub] of Object.entries(subscriptions)) {
      const request = { ...(sub || {}) };
      if (request.snapshot === true) {
        if (request.start_seq) throw new TypeError(`${name}: a snapshot subscription takes no start_seq`);
        if (request.after_seq && request.epoch) {
          this.lastSeq[name] = request.after_seq;
          this.epoch[name] = request.epoch;
        }
        delete request.epoch;
      } else {
        const after = afterSeq ?? request.after_seq;
        if (after) this.lastSeq[name] = after;
        if (request.start_seq) this.startSeq[name] = request.start_seq;
      }
      delete request.after_seq;
      delete request.start_seq;
      this.subscriptions[name] = request;
    }
  }

  _setState(state, detail) {
    this.state = state;
    if (this.options.onState) this.options.onState(state, detail);
  }

  async _token() {
    const token = this.options.token;
    return typeof token === "function" ? await token() : token;
  }

  async _connect() {
    if (this._stopped) return;
    this._setState(this.connections ? "reconnecting" : "connecting", { failures: this.failures });
    this._generation = (this._generation || 0) + 1;
    const generation = this._generation; // a later _connect (resubscribe) supersedes this one
    let hello;
    try {
      hello = await this.handshake();
    } catch (error) {
      if (generation === this._generation) this._dropped(1006, `handshake not built: ${error}`);
      return;
    }
    if (this._stopped || generation !== this._generation) return;
    this._snapshotting.clear();
    for (const [name, request] of Object.entries(hello)) {
      if (!request || request.snapshot !== true || request.after_seq !== undefined) continue;
      // a fresh snapshot: no position until its snapshot_done; what the caller holds is dropped first
      this._snapshotting.add(name);
      delete this.lastSeq[name];
      delete this.epoch[name];
      if (this._holding.has(name)) this._control({ _control: "reset", class: name, local: true });
    }
    const WS = this.options.WebSocket || WebSocket;
    const ws = new WS(this.url);
    this._ws = ws;
    const heads = {};
    const seen = new Set(); // classes with a document message on this connection
    let confirmed = false;
    // a server that upgrades and never confirms is a drop to retry, not a wait forever
    const openTimeout = this.options.openTimeout ?? 10;
    const unconfirmed = setTimeout(() => {
      if (ws !== this._ws || confirmed) return;
      this._ws = null; // its close event is ignored: the drop is reported here
      ws.close();
      this._dropped(1006, `no confirmation within ${openTimeout} s`);
    }, openTimeout * 1000);
    ws.onopen = () => ws.send(JSON.stringify(hello));
    ws.onmessage = (event) => {
      if (ws !== this._ws) return;
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch (error) {
        ws.close(1002, "not JSON");
        return;
      }
      if (!confirmed) {
        confirmed = true;
        clearTimeout(unconfirmed);
        this._opened(msg, hello, heads);
        return;
      }
      this._received(msg, ws, heads, seen);
    };
    ws.onclose = (event) => {
      clearTimeout(unconfirmed);
      if (ws !== this._ws) return;
      this._ws = null;
      this._dropped(event.code, event.reason);
    };
  }

  _opened(confirmation, hello, heads) {
    this.connections += 1;
    this.failures = 0;
    this.confirmation = confirmation;
    const resumed = {};
    const snapshot = [];
    for (const [name, params] of Object.entries(confirmation)) {
      const asked = hello[name];
      if (asked && asked.snapshot === true) {
        // a snapshot class has a position from its snapshot_done on, never from the head
        if (asked.after_seq === undefined) snapshot.push(name);
      } else if (params && typeof params.head_seq === "string") {
        heads[name] = params.head_seq;
        // live only (no replay asked): resume from the head; a replay sets the position as it arrives
        if (this.lastSeq[name] === undefined) this.lastSeq[name] = params.head_seq;
      }
      if (asked && asked.after_seq !== undefined) resumed[name] = asked.after_seq;
    }
    this._setState("open", { confirmation, resumed, snapshot });
  }

  _received(msg, ws, heads, seen) {
    const kind = msg._control;
    if (kind !== undefined) {
      const name = msg.class;
      if (kind === "replay_done") {
        if (this.lastSeq[name] === undefined || msg.seq > this.lastSeq[name]) this.lastSeq[name] = msg.seq;
      } else if (kind === "history_gone") {
        // what follows is live from this connection's head on: resume from there next time
        if (!seen.has(name) && heads[name] !== undefined) this.lastSeq[name] = heads[name];
      } else if (kind === "token_expiring" && typeof this.options.token === "function") {
        this._token().then((token) => {
          if (ws === this._ws) ws.send(JSON.stringify({ _control: "refresh", token }));
        });
      }
      this._control(msg);
      return;
    }
    const name = msg.doc_class;
    this._holding.add(name);
    if (this._snapshotting.has(name)) {
      // a snapshot's documents come in no seq order (each with the seq of its last change): all delivered;
      // the position is the snapshot_done's
      if (this.options.onMessage) this.options.onMessage(msg);
      return;
    }
    const last = this.lastSeq[name];
    if (last !== undefined && msg.seq <= last) {
      this.duplicates += 1; // never delivered twice
      return;
    }
    this.lastSeq[name] = msg.seq;
    seen.add(name);
    const start = this.startSeq[name];
    if (start !== undefined && msg.seq < start) return; // before the subscription's start_seq: not wanted
    if (this.options.onMessage) this.options.onMessage(msg);
  }

  /** A control message: snapshot bookkeeping, then the caller's onControl. */
  _control(msg) {
    const kind = msg._control;
    const name = msg.class;
    if (kind === "snapshot_done") {
      // the collection is whole at msg.seq: from here on the class resumes with after_seq and epoch
      this._snapshotting.delete(name);
      this._holding.add(name);
      const last = this.lastSeq[name];
      if (typeof msg.seq === "string" && (last === undefined || msg.seq > last)) this.lastSeq[name] = msg.seq;
      if (msg.epoch) this.epoch[name] = msg.epoch;
    } else if (kind === "reset") {
      // drop the collection: a fresh snapshot follows, its documents in no seq order
      this._snapshotting.add(name);
      this._holding.delete(name);
      delete this.lastSeq[name];
      delete this.epoch[name];
    }
    if (this.options.onControl) this.options.onControl(msg);
  }

  _dropped(code, reason) {
    if (this._stopped) return;
    if (TERMINAL_CLOSE_CODES.has(code)) {
      this._stopped = true;
      this._setState("refused", { code, reason });
      return;
    }
    this.failures += 1;
    const delay = this.backoff.delay(this.failures);
    this._setState("reconnecting", { code, reason, delay, failures: this.failures });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._connect(), delay * 1000);
  }
}

/**
 * The documents of one class, by `_id`, kept up to date by the messages of a Listener.
 *
 * With a snapshot subscription (`snapshot: true`) it needs nothing else: it fills from the snapshot, is
 * `complete` from `snapshot_done` on (exactly the server's view at that seq, then kept so), and on `reset`
 * clears itself (not complete) and fills again from the fresh snapshot that follows.
 *
 * options:
 *   onChange  (kind, id, doc, previous) => ...; kind: "insert", "update", "delete", "exit", "clear" (every
 *             document dropped: `clear()`, a `reset`, a `history_gone`), "reload", "complete" (a
 *             `snapshot_done`: the collection is the server's view)
 *   reload    (historyGone) => docs | Promise<docs> | undefined: called on `history_gone` for this class,
 *             after the collection was cleared; documents it returns are added, except those that a live
 *             message changed meanwhile (the live version is newer). Default: none (the collection stays
 *             cleared and fills again from live messages).
 */
export class Collection {
  constructor(className, options = {}) {
    this.className = className;
    this.options = options;
    this.docs = new Map();
    /** True from a `snapshot_done` on (the server's view, kept up to date); false before, after a reset. */
    this.complete = false;
    /** The seq of the last `snapshot_done`. */
    this.snapshotSeq = undefined;
    this._touched = null;
  }

  /** Apply a document or control message (messages of other classes are ignored). */
  handle(msg) {
    if (msg._control !== undefined) {
      if (msg.class !== this.className) return undefined;
      if (msg._control === "history_gone") return this._historyGone(msg);
      if (msg._control === "reset") {
        this.clear();
      } else if (msg._control === "snapshot_done") {
        this.complete = true;
        this.snapshotSeq = msg.seq;
        this._emit("complete");
      }
      return undefined;
    }
    if (msg.doc_class === this.className) this.apply(msg);
    return undefined;
  }

  /** Apply one document message: I and U upsert, D and X remove. */
  apply(msg) {
    const doc = msg.message || {};
    const id = doc._id;
    if (this._touched) this._touched.add(id);
    const previous = this.docs.get(id);
    if (msg.op === "D" || msg.op === "X") {
      if (previous === undefined) return;
      this.docs.delete(id);
      this._emit(msg.op === "D" ? "delete" : "exit", id, undefined, previous);
    } else {
      this.docs.set(id, doc);
      this._emit(previous === undefined ? "insert" : "update", id, doc, previous);
    }
  }

  /** Forget every document (the collection is no longer complete). */
  clear() {
    this.docs.clear();
    this.complete = false;
    this._emit("clear");
  }

  async _historyGone(msg) {
    this.clear();
    if (!this.options.reload) return;
    this._touched = new Set();
    try {
      const docs = await this.options.reload(msg);
      for (const doc of docs || []) {
        if (doc && !this._touched.has(doc._id)) this.docs.set(doc._id, doc);
      }
    } finally {
      this._touched = null;
    }
    this._emit("reload");
  }

  _emit(kind, id, doc, previous) {
    if (this.options.onChange) this.options.onChange(kind, id, doc, previous);
  }
}
