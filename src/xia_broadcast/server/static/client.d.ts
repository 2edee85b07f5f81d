/**
 * TypeScript declarations of client.js, the xia-broadcast browser client (docs/client.md; the messages are
 * those of docs/protocol.md).
 *
 *   import { Listener, Collection } from "xia-broadcast-client";
 *
 *   interface Order { _id: string; region: string; amount: number }
 *   const orders = new Collection<Order>("Order", { onChange: (kind, id, doc, previous) => render(kind, id, doc) });
 *   new Listener<{ Order: Order }>("ws", { Order: { snapshot: true } }, {
 *     onMessage: (msg) => orders.handle(msg),
 *     onControl: (msg) => orders.handle(msg),
 *   }).start();
 *
 * Self-contained: they need neither the DOM's nor Node's types (the `WebSocket` option takes any class shaped
 * like the browser's).
 */

// -- values of the protocol ----------------------------------------------------------------------------------

/**
 * A position in a class's journal, `<13-digit epoch milliseconds>-<10-digit counter>`: within a class,
 * lexicographic order is publish order.
 */
export type Seq = string;

/** The epoch of a class's journal (new when the journal starts again empty): the confirmation's, a `snapshot_done`'s. */
export type Epoch = string;

/** A document's `_id`: a non-empty string or an integer. */
export type DocId = string | number;

/** A JSON value. */
export type JsonValue = string | number | boolean | null | readonly JsonValue[] | { readonly [key: string]: JsonValue };

/** What every document has: its `_id` (the one field a catalog never leaves out). */
export interface DocumentBase {
  _id: DocId;
}

/** A document of unknown shape, as delivered: `_id` and the fields the subscriber's catalog lets through. */
export interface AnyDocument extends DocumentBase {
  [field: string]: unknown;
}

/** Document classes by name, each with the shape of its documents as delivered: `{ Order: Order, ... }`. */
export type ClassMap = Record<string, DocumentBase>;

// -- subscriptions (the handshake) ---------------------------------------------------------------------------

/** The operators of a data scope (docs/semantics.md, section 2). */
export type ScopeOperator = "==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not in";

/** One condition of a data scope: the field `fn` (a dotted path reaches into embedded documents), `op`, `val`. */
export interface ScopeCondition {
  fn: string;
  op: ScopeOperator;
  val: JsonValue;
}

/**
 * The fields sent, by name: `null`, `true` include a field, `false` leaves it out, an object is the catalog of
 * an embedded document (docs/semantics.md, section 3).
 */
export interface Catalog {
  [field: string]: null | boolean | Catalog;
}

/** What every subscription may hold. */
export interface SubscriptionBase {
  /** The row filter: every condition must hold; `null` or `[]` for every document. */
  data_scope?: readonly ScopeCondition[] | null;
  /** The fields sent; `null` or `{}` for every field (but hidden ones). */
  catalog?: Catalog | null;
  /** Ask for hidden fields too (refused with 4403 without the permission). */
  show_hidden?: boolean;
}

/** A subscription to changes only (no snapshot). */
export interface LiveSubscription extends SubscriptionBase {
  snapshot?: false;
  /**
   * The original's filter: messages with an earlier seq are not delivered (applied by the Listener itself,
   * never sent); nothing is replayed.
   */
  start_seq?: Seq;
  /** Replay what was published after this seq, then go live. */
  after_seq?: Seq;
  /** Replay from this seq on (inclusive), then go live; give it or `after_seq`, not both. */
  from_seq?: Seq;
  /** The epoch `after_seq` comes from (sent as given): a position of another epoch is history gone. */
  epoch?: Epoch;
}

/**
 * A subscription that first receives every current document of its view, then `snapshot_done`, then live
 * changes. It takes no `start_seq` (the Listener throws a TypeError); it resumes from a saved position only
 * with both `after_seq` and `epoch` (those of a `snapshot_done`, or of a change received after it).
 */
export interface SnapshotSubscription extends SubscriptionBase {
  snapshot: true;
  start_seq?: never;
  after_seq?: Seq;
  epoch?: Epoch;
}

export type Subscription = LiveSubscription | SnapshotSubscription;

/** Subscriptions by class name; `null` or `{}` subscribes to every document of the class. */
export type Subscriptions<Name extends string = string> = { [C in Name]?: Subscription | null };

/** The `_options` of a handshake: control messages always; strict checking unless turned off. */
export interface HandshakeOptions {
  control: true;
  strict?: true;
}

/** The first message of a connection, as `Listener.handshake()` builds it (docs/protocol.md, section 1). */
export interface Handshake {
  /** `_header` entries: `X-App-Name`, `X-Api-Key`, `Authorization: Bearer <token>`... */
  _header?: Record<string, string>;
  /** `strict` unless the Listener's option `strict` is false. */
  _options: HandshakeOptions;
  [className: string]: LiveSubscription | SnapshotSubscription | Record<string, string> | HandshakeOptions | undefined;
}

/** The server's confirmation of one class's subscription: what was asked, plus what the server decided. */
export interface ConfirmedSubscription {
  data_scope: ScopeCondition[] | null;
  catalog: Catalog | null;
  show_hidden: boolean;
  start_seq: string;
  /** The subscriber's ACL in display form, or null (unrestricted). */
  acl: unknown;
  user_name: string;
  /** Epoch seconds when the subscription was made. */
  start_time: number;
  /** The class's position when the subscription went live (absent from servers without a journal). */
  head_seq?: Seq;
  /** The journal's epoch for the class. */
  epoch?: Epoch | null;
  [key: string]: unknown;
}

/** The first message a connection receives: `{class: confirmed subscription}` for every class subscribed. */
export type Confirmation = Record<string, ConfirmedSubscription>;

// -- server messages -----------------------------------------------------------------------------------------

/** A document message's op: `I` insert, `U` update, `D` delete, `X` exit (the document left the view). */
export type Op = "I" | "U" | "D" | "X";

/** An insert, update or delete: `message` is the document projected through the subscriber's catalog. */
export interface ChangeMessage<Doc extends DocumentBase = AnyDocument, Class extends string = string> {
  doc_class: Class;
  op: "I" | "U" | "D";
  seq: Seq;
  message: Doc;
}

/** An exit: an update took the document out of the subscriber's view; `message` holds its `_id` only. */
export interface ExitMessage<Doc extends DocumentBase = AnyDocument, Class extends string = string> {
  doc_class: Class;
  op: "X";
  seq: Seq;
  message: { _id: Doc["_id"] };
}

/** A document message `{doc_class, op, seq, message}`. */
export type DocumentMessage<Doc extends DocumentBase = AnyDocument, Class extends string = string> =
  | ChangeMessage<Doc, Class>
  | ExitMessage<Doc, Class>;

/** A document message of one of the classes of `Classes`, `doc_class` telling which. */
export type DocumentMessageOf<Classes extends ClassMap> = {
  [C in keyof Classes & string]: DocumentMessage<Classes[C], C>;
}[keyof Classes & string];

/** A replay reached the end of the journal: live from here (`seq`: the class's last seq then). */
export interface ReplayDone {
  _control: "replay_done";
  class: string;
  seq: Seq;
}

/** A snapshot subscription holds exactly the class's documents at `seq` (also after a resume). */
export interface SnapshotDone {
  _control: "snapshot_done";
  class: string;
  seq: Seq;
  epoch: Epoch;
}

/**
 * Drop what is held of a snapshot class: a fresh snapshot follows. From the server (its position is gone), or
 * made by the Listener with `local: true` (a drop before `snapshot_done`, or `resubscribe`).
 */
export interface Reset {
  _control: "reset";
  class: string;
  local?: true;
}

/** Right after the confirmation: the subscriber's ACL grants `read` on no document of the class. */
export interface AclReadsNothing {
  _control: "acl_reads_nothing";
  class: string;
}

/** The changes after `seq` (the position asked) are no longer held: reload the class; live changes follow. */
export interface HistoryGone {
  _control: "history_gone";
  class: string;
  seq: Seq;
  oldest_seq: Seq | null;
}

/** The connection's JWT expires at `expires_at` (epoch seconds): the Listener refreshes it when `token` is a function. */
export interface TokenExpiring {
  _control: "token_expiring";
  expires_at: number;
}

/** The server accepted a refreshed token. */
export interface TokenRefreshed {
  _control: "token_refreshed";
  expires_at: number;
}

/** A control message `{_control, ...}` (docs/protocol.md, section 3). */
export type ControlMessage =
  | ReplayDone
  | SnapshotDone
  | Reset
  | AclReadsNothing
  | HistoryGone
  | TokenExpiring
  | TokenRefreshed;

/** The kinds of control messages. */
export type ControlKind = ControlMessage["_control"];

/** Any message after the confirmation. */
export type ServerMessage = DocumentMessage | ControlMessage;

// -- exports of client.js ------------------------------------------------------------------------------------

/**
 * Close codes after which reconnecting with the same request cannot succeed (docs/protocol.md, section 5).
 * A Set at run time, read by every Listener: typed read-only.
 */
export declare const TERMINAL_CLOSE_CODES: ReadonlySet<number>;

/** Options of a Backoff; delays in seconds. */
export interface BackoffOptions {
  /** The largest delay after the first failure (default 0.5). */
  initial?: number;
  /** Its growth per consecutive failure (default 2). */
  factor?: number;
  /** The largest delay ever (default 30). */
  maxDelay?: number;
  /** Uniform in [0, 1) (default Math.random). */
  random?: () => number;
}

/**
 * Reconnection delays in seconds: after the n-th consecutive failure, uniform in
 * [0, min(maxDelay, initial * factor ** (n - 1))] ("full jitter").
 */
export declare class Backoff {
  constructor(options?: BackoffOptions);
  initial: number;
  factor: number;
  maxDelay: number;
  random: () => number;
  /** The largest delay after `failures` consecutive failures, in seconds. */
  bound(failures: number): number;
  /** A delay drawn with full jitter, in seconds. */
  delay(failures: number): number;
}

/** A ws:// or wss:// URL from an absolute URL or a path relative to the page ("ws", "/ws"). */
export declare function webSocketUrl(url: string): string;

/** The states of a Listener. */
export type ListenerState = "idle" | "connecting" | "open" | "reconnecting" | "refused" | "closed";

/**
 * The detail of `connecting` and `reconnecting` when a connection is being made (`failures`: consecutive
 * failures before it).
 */
export interface AttemptDetail {
  failures: number;
  code?: undefined;
  reason?: undefined;
  delay?: undefined;
  confirmation?: undefined;
  resumed?: undefined;
  snapshot?: undefined;
}

/** The detail of `reconnecting` when a connection dropped or could not be made: the next attempt is in `delay` s. */
export interface DropDetail {
  code: number;
  reason: string;
  delay: number;
  failures: number;
  confirmation?: undefined;
  resumed?: undefined;
  snapshot?: undefined;
}

/** The detail of `open`: a connection is confirmed. */
export interface OpenDetail {
  confirmation: Confirmation;
  /** `{class: after_seq}` of the classes resumed. */
  resumed: Record<string, Seq>;
  /** The classes sent a fresh snapshot. */
  snapshot: string[];
  code?: undefined;
  reason?: undefined;
  delay?: undefined;
  failures?: undefined;
}

/** The detail of `refused`: a final refusal (a close code of TERMINAL_CLOSE_CODES), the Listener stopped. */
export interface RefusedDetail {
  code: number;
  /** The server's reason, e.g. `Order: data_scope[0]: Order has no field 'regoin'` (4420, strict checking). */
  reason: string;
  delay?: undefined;
  failures?: undefined;
  confirmation?: undefined;
  resumed?: undefined;
  snapshot?: undefined;
}

/** The detail of `closed`: nothing. */
export interface ClosedDetail {
  code?: undefined;
  reason?: undefined;
  delay?: undefined;
  failures?: undefined;
  confirmation?: undefined;
  resumed?: undefined;
  snapshot?: undefined;
}

/** The detail of each state, as `onState(state, detail)` receives it. */
export interface StateDetails {
  connecting: AttemptDetail;
  reconnecting: DropDetail | AttemptDetail;
  open: OpenDetail;
  refused: RefusedDetail;
  closed: ClosedDetail;
}

/**
 * The detail of any state: every field is there or `undefined` as the state says (`StateDetails`), so that a
 * field can be read without narrowing, and a check of one narrows the others (`detail.delay !== undefined`:
 * `code` and `reason` too).
 */
export type StateDetail = StateDetails[keyof StateDetails];

/** What the Listener uses of the WebSocket it creates (its handlers get the browser's events). */
export interface WebSocketLike {
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket class: the browser's, or one shaped like it. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** A JWT, or a function (may be async) returning one. */
export type TokenSource = string | (() => string | PromiseLike<string>);

/** The options of a Listener. */
export interface ListenerOptions<Classes extends ClassMap = Record<string, AnyDocument>> {
  /** `_header` entries, e.g. `{"X-App-Name": "shop", "X-Api-Key": "..."}`. */
  header?: Record<string, string>;
  /**
   * Sent as `Authorization: Bearer` in `_header`; a function is called on every connection and for a refresh
   * when the server announces `token_expiring`.
   */
  token?: TokenSource;
  /** A Backoff, or its options. */
  backoff?: Backoff | BackoffOptions;
  /** Every document message (never one twice). */
  onMessage?: (msg: DocumentMessageOf<Classes>) => void;
  /** Every control message (and the `reset` the Listener makes itself, `local: true`). */
  onControl?: (msg: ControlMessage) => void;
  /**
   * Every change of state, with its detail (`StateDetails`): `connecting` and `reconnecting` `{failures}` when a
   * connection is being made, `reconnecting` `{code, reason, delay, failures}` after a drop, `open`
   * `{confirmation, resumed, snapshot}`, `refused` `{code, reason}`, `closed` `{}`. Never `idle`.
   */
  onState?: (state: Exclude<ListenerState, "idle">, detail: StateDetail) => void;
  /** Seconds from opening a connection to the server's confirmation (default 10): past it, dropped and retried. */
  openTimeout?: number;
  /**
   * Ask the server for strict checking (default true): a scope field, catalog name or subscription key the class
   * does not declare is refused (4400, 4420, 4421: state `refused`, the server's reason in the detail) instead of
   * matching nothing. False: the original listener's leniency.
   */
  strict?: boolean;
  /** The WebSocket class to use (default: the global one). */
  WebSocket?: WebSocketConstructor;
}

/** `T` where it is not inferred from (TypeScript's `NoInfer`, for versions before 5.4 too). */
export type NotInferred<T> = [T][T extends any ? 0 : never];

/**
 * Stays subscribed across drops, resuming without loss or repetition. `Classes` names the classes and the
 * shape of their documents, for `onMessage` (`msg.doc_class` tells which): `new Listener<{Order: Order}>(...)`.
 */
export declare class Listener<Classes extends ClassMap = Record<string, AnyDocument>> {
  /**
   * @param url a ws:// or wss:// URL, or a path relative to the page ("ws")
   * @param subscriptions `{class: subscription}`
   * @throws TypeError for a snapshot subscription with a `start_seq`
   */
  constructor(
    url: string,
    subscriptions: Subscriptions<NotInferred<keyof Classes & string>>,
    options?: ListenerOptions<Classes>,
  );
  /** The WebSocket URL (absolute). */
  readonly url: string;
  readonly options: ListenerOptions<Classes>;
  readonly backoff: Backoff;
  readonly state: ListenerState;
  /** Consecutive failed attempts (0 once a connection is confirmed). */
  readonly failures: number;
  /** Connections confirmed so far. */
  readonly connections: number;
  /** Messages dropped as repeats (0 with a correct server). */
  readonly duplicates: number;
  /** The last confirmation, or null before the first. */
  readonly confirmation: Confirmation | null;
  /** The subscriptions as sent (without `after_seq`, `start_seq`, and a snapshot's `epoch`). */
  readonly subscriptions: Readonly<Record<string, Subscription>>;
  /** The position of every class: `{class: seq}`. */
  readonly lastSeq: Readonly<Record<string, Seq>>;
  /** The `start_seq` filters: `{class: seq}`. */
  readonly startSeq: Readonly<Record<string, Seq>>;
  /** The epoch of the position of every snapshot class (from its `snapshot_done` on). */
  readonly epoch: Readonly<Record<string, Epoch>>;
  /** Connect (and keep connecting); returns this listener. */
  start(): this;
  /** Stop for good: the connection is closed and no reconnection follows. */
  close(): void;
  /**
   * Replace the subscriptions and reconnect at once. Positions start over: `afterSeq` (for every class but
   * snapshot ones) asks for a replay of what was published after it; without it, live from now on.
   */
  resubscribe(subscriptions: Subscriptions<NotInferred<keyof Classes & string>>, options?: { afterSeq?: Seq }): void;
  /** The first message of the next connection. */
  handshake(): Promise<Handshake>;
}

/**
 * The kind of a Collection's change: `insert`, `update`, `delete`, `exit` (one document); `clear` (every
 * document dropped: `clear()`, a `reset`, a `history_gone`), `reload` (what `reload` returned was added),
 * `complete` (a `snapshot_done`: the collection is the server's view).
 */
export type ChangeKind = "insert" | "update" | "delete" | "exit" | "clear" | "reload" | "complete";

/** The options of a Collection. */
export interface CollectionOptions<Doc extends DocumentBase = AnyDocument> {
  /**
   * Every change of the collection: `insert` (id, doc), `update` (id, doc, previous), `delete` and `exit`
   * (id, previous); `clear`, `reload` and `complete` without id or documents.
   */
  onChange?: (kind: ChangeKind, id: Doc["_id"] | undefined, doc: Doc | undefined, previous: Doc | undefined) => void;
  /**
   * Called on `history_gone` for the class, after the collection was cleared: documents it returns are added,
   * except those a live message changed meanwhile. Default: none (it fills again from live messages).
   */
  reload?: (historyGone: HistoryGone) => Iterable<Doc> | null | void | PromiseLike<Iterable<Doc> | null | void>;
}

/** The documents of one class, by `_id`, kept up to date by the messages of a Listener. */
export declare class Collection<Doc extends DocumentBase = AnyDocument> {
  constructor(className: string, options?: CollectionOptions<Doc>);
  readonly className: string;
  readonly options: CollectionOptions<Doc>;
  /** The documents, by `_id`. */
  readonly docs: Map<Doc["_id"], Doc>;
  /** True from a `snapshot_done` on (the server's view, kept up to date); false before, and after a clear. */
  readonly complete: boolean;
  /** The seq of the last `snapshot_done`. */
  readonly snapshotSeq: Seq | undefined;
  /**
   * Apply a document or control message (those of other classes are ignored). For this class's
   * `history_gone`: a promise, settled once `reload` was applied.
   */
  handle(msg: DocumentMessage<DocumentBase> | ControlMessage): Promise<void> | undefined;
  /** Apply one document message of this class: I and U upsert, D and X remove. */
  apply(msg: DocumentMessage<Doc>): void;
  /** Forget every document (the collection is no longer complete). */
  clear(): void;
}
