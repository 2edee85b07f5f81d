// Type-checked by tests/test_client_types.py without the DOM's types (lib es2022 only, as a Node project):
// the declarations stand alone, and the WebSocket option takes any class shaped like the browser's.
import * as client from "xia-broadcast-client";

class Socket {
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: string }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  constructor(readonly url: string) {}
  send(data: string): void {}
  close(code?: number, reason?: string): void {}
}

const orders = new client.Collection("Order");
const listener = new client.Listener("ws://127.0.0.1:8765/ws", { Order: null }, {
  WebSocket: Socket,
  backoff: new client.Backoff({ maxDelay: 1 }),
  onMessage: (msg) => orders.handle(msg),
  onControl: (msg) => orders.handle(msg),
}).start();
const stop: boolean = client.TERMINAL_CLOSE_CODES.has(4401) && client.webSocketUrl("/ws").startsWith("ws");
listener.close();
