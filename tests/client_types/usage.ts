// Type-checked by tests/test_client_types.py with `tsc --strict --noEmit`, as a front-end project would import
// the package: every export of client.js and every option, with the types a caller would write.
import {
  Backoff,
  Collection,
  Listener,
  TERMINAL_CLOSE_CODES,
  webSocketUrl,
  type ChangeKind,
  type ControlMessage,
  type DocumentMessage,
  type HistoryGone,
  type ListenerState,
  type Seq,
  type StateDetails,
  type Subscriptions,
} from "xia-broadcast-client";

interface Order {
  _id: string;
  order_id: string;
  region: string;
  amount: number;
}

interface Customer {
  _id: number;
  name: string;
}

// -- constants, functions, Backoff ---------------------------------------------------------------------------

const refused: boolean = TERMINAL_CLOSE_CODES.has(4413);
const url: string = webSocketUrl("/ws");
const defaults = new Backoff();
const backoff = new Backoff({ initial: 0.25, factor: 3, maxDelay: 10, random: () => 0.5 });
const bound: number = backoff.bound(3) + defaults.delay(1) + backoff.initial + backoff.factor + backoff.maxDelay;
const draw: number = backoff.random();

// -- Collection ----------------------------------------------------------------------------------------------

const seen: ChangeKind[] = [];
const orders = new Collection<Order>("Order", {
  onChange: (kind, id, doc, previous) => {
    seen.push(kind);
    const key: string | undefined = id;
    if (doc !== undefined) {
      const amount: number = doc.amount;
    }
    const before: number = previous ? previous.amount : 0;
  },
  reload: async (historyGone: HistoryGone): Promise<Order[]> => {
    const since: Seq = historyGone.seq;
    const oldest: Seq | null = historyGone.oldest_seq;
    return [{ _id: "A-1", order_id: "A-1", region: "EU", amount: 3 }];
  },
});
const customers = new Collection<Customer>("Customer", { reload: () => undefined });
const anything = new Collection("Anything", { onChange: (kind) => seen.push(kind), reload: () => [{ _id: 1, x: "y" }] });
const plain = new Collection("Plain");
const first: Order | undefined = orders.docs.get("A-1");
const byNumber: Customer | undefined = customers.docs.get(7);
const complete: boolean = orders.complete;
const at: Seq | undefined = orders.snapshotSeq;
const name: string = orders.className + plain.className + anything.docs.size;
orders.apply({ doc_class: "Order", op: "U", seq: "1-1", message: { _id: "A-1", order_id: "A-1", region: "EU", amount: 4 } });
orders.apply({ doc_class: "Order", op: "X", seq: "1-2", message: { _id: "A-1" } });
orders.clear();
const reloaded: Promise<void> | undefined = orders.handle({ _control: "history_gone", class: "Order", seq: "1-0", oldest_seq: null });
orders.handle({ _control: "snapshot_done", class: "Order", seq: "1-3", epoch: "1-e" });
orders.handle({ _control: "reset", class: "Order" });

// -- Listener ------------------------------------------------------------------------------------------------

const subscriptions: Subscriptions = {
  Order: { data_scope: [{ fn: "region", op: "==", val: "EU" }, { fn: "status", op: "not in", val: ["new", "paid"] }],
           catalog: { order_id: null, amount: true, margin: false, ship_to: { city: null } }, show_hidden: false,
           start_seq: "1-0", after_seq: "1-1", epoch: "1-e" },
  Customer: null,
  Everything: {},
};
const states: ListenerState[] = [];
const listener = new Listener<{ Order: Order; Customer: Customer }>("ws", {
  Order: { snapshot: true, after_seq: "1-3", epoch: "1-e", data_scope: [{ fn: "amount", op: ">=", val: 100 }] },
  Customer: { snapshot: false, start_seq: "1-0" },
}, {
  header: { "X-App-Name": "shop", "X-Api-Key": "key" },
  token: async () => "jwt",
  backoff: { initial: 1, maxDelay: 5 },
  openTimeout: 5,
  strict: true,
  WebSocket: WebSocket,
  onMessage: (msg) => {
    if (msg.doc_class === "Order") {
      orders.handle(msg);
      if (msg.op !== "X") {
        const amount: number = msg.message.amount;
      } else {
        const id: string = msg.message._id;
      }
    } else {
      customers.handle(msg);
      const id: number = msg.message._id;
    }
  },
  onControl: (msg: ControlMessage) => {
    orders.handle(msg);
    switch (msg._control) {
      case "snapshot_done": { const epoch: string = msg.epoch; break; }
      case "reset": { const local: true | undefined = msg.local; break; }
      case "history_gone": { const oldest: Seq | null = msg.oldest_seq; break; }
      case "replay_done": { const seq: Seq = msg.seq; break; }
      case "acl_reads_nothing": { const cls: string = msg.class; break; }
      case "token_expiring":
      case "token_refreshed": { const when: number = msg.expires_at; break; }
    }
  },
  onState: (state, detail) => {
    states.push(state);
    const failures: number | undefined = detail.failures;
    if (detail.confirmation !== undefined) {
      const resumed: Seq | undefined = detail.resumed["Order"];
      const fresh: string[] = detail.snapshot;
      const head: Seq | undefined = detail.confirmation["Order"]?.head_seq;
    }
    if (detail.delay !== undefined) {
      const wait: number = detail.delay + detail.failures;
      const code: number = detail.code;
      const reason: string = detail.reason;
    }
    if (state === "refused") {
      const final = detail as StateDetails["refused"];
      const code: number = final.code;
    }
  },
}).start();
const untyped = new Listener("wss://example.com/ws", subscriptions, {
  token: "jwt",
  backoff,
  onMessage: (msg: DocumentMessage) => {
    anything.handle(msg);
    if (msg.op !== "X") {
      const amount: unknown = msg.message["amount"];
    }
  },
});
const minimal = new Listener("ws", { Order: { snapshot: true } });
const lenient = new Listener("ws", { Order: { catalog: { not_declared: null } } }, { strict: false });
const strictly = lenient.handshake().then((h) => { const asked: true | undefined = h._options.strict; return asked; });
untyped.resubscribe({ Order: { data_scope: null } }, { afterSeq: "1-9" });
listener.resubscribe({ Order: { snapshot: true } });
const hello = untyped.handshake().then((h) => h._options.control && h._header?.["Authorization"]);
const position: Seq | undefined = listener.lastSeq["Order"];
const epoch: string | undefined = listener.epoch["Order"];
const numbers: number = listener.failures + listener.connections + listener.duplicates;
const where: string = listener.url;
const confirmed = listener.confirmation?.["Order"]?.user_name;
const current: ListenerState = minimal.state;
const filter: Seq | undefined = untyped.startSeq["Order"];
const same: Backoff = untyped.backoff;
listener.close();
