// Deliberately wrong uses of the package: tests/test_client_types.py checks that `tsc --strict --noEmit`
// reports an error on exactly the lines marked `// error TSnnnn`, with that code, and on no other line.
import { Backoff, Collection, Listener, TERMINAL_CLOSE_CODES, webSocketUrl } from "xia-broadcast-client";

interface Order { _id: string; amount: number }

const orders = new Collection<Order>("Order");
new Listener(8765, {}); // error TS2345
new Listener("ws", {}, { onmessage: () => {} }); // error TS2561
new Listener("ws", {}, { reconnect: true }); // error TS2353
orders.apply({ doc_class: "Order", op: "R", seq: "1-1", message: { _id: "A", amount: 1 } }); // error TS2322
new Listener("ws", {}, { onMessage: (msg) => msg.op === "R" }); // error TS2367
new Listener("ws", {}, { onControl: (msg) => msg._control === "snapshot_end" }); // error TS2367
new Listener("ws", { Order: { snapshot: true, start_seq: "1-0" } }); // error TS2322
new Listener("ws", { Order: { after_seq: 5 } }); // error TS2322
new Listener("ws", { Order: { data_scope: [{ fn: "amount", op: "~", val: 1 }] } }); // error TS2322
new Listener("ws", { Order: { catalog: { amount: 1 } } }); // error TS2322
new Listener("ws", { Order: { show_hidden: "yes" } }); // error TS2322
new Listener<{ Order: Order }>("ws", { Customer: {} }); // error TS2353
new Listener<{ Order: Order }>("ws", {}, { onMessage: (msg) => msg.message.amount }); // error TS2339
new Listener("ws", {}, { header: { "X-Retry": 3 } }); // error TS2322
new Listener("ws", {}, { token: 42 }); // error TS2322
new Listener("ws", {}, { strict: "yes" }); // error TS2322
new Listener("ws", {}, { backoff: { max_delay: 5 } }); // error TS2561
new Listener("ws", {}, { onState: (state) => state === "failed" }); // error TS2367
new Collection<Order>("Order", { onChange: (kind) => kind === "added" }); // error TS2367
new Collection<Order>("Order", { reload: () => [{ _id: 1, amount: 2 }] }); // error TS2322
orders.complete = true; // error TS2540
TERMINAL_CLOSE_CODES.add(1000); // error TS2339
webSocketUrl(); // error TS2554
new Backoff({ initial: "1s" }); // error TS2322
