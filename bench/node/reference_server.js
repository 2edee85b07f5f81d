#!/usr/bin/env node
// Reference fan-out server: the plain, obvious Node.js `ws` implementation.
//
// The second baseline of the benchmarks, beside bench/reference_server.py (Python `websockets`), with the
// same protocol, so the same load generator and publisher drive both:
//
// * ws://127.0.0.1:WS_PORT/ws -- clients. The first client message must be a JSON object with exactly one
//   key, the class name, mapping to an object of subscription parameters; the server answers with
//   {"Order": {...the same parameters...}} and from then on pushes
//   {"doc_class": "Order", "op": "I", "seq": "00000000000000000001", "message": {...}} text frames. `seq` is
//   a 20-digit zero-padded counter, so it increases both numerically and lexicographically.
// * http://127.0.0.1:HTTP_PORT/publish -- one change {"class", "op", "doc"} or {"changes": [change, ...]}.
//   Each change is encoded ONCE (JSON.stringify) and sent to every subscribed client with `ws.send`, no
//   filtering, no compression; the response {"published": n, "last_seq": "..."} follows the broadcast.
//
// Every ws.send is one socket write (ws corks the header and payload of a frame into one writev), so the
// server makes one write per delivery, as every plain broadcaster does.
//
// Usage: node reference_server.js --ws-port 8765 --http-port 8766
'use strict';

const http = require('node:http');
const { parseArgs } = require('node:util');
const { WebSocketServer } = require('ws');

const HANDSHAKE_TIMEOUT_MS = 10000;
const MAX_HTTP_BODY_BYTES = 64 * 1024 * 1024;
const LISTEN_BACKLOG = 4096;

const { values } = parseArgs({
  options: { 'ws-port': { type: 'string' }, 'http-port': { type: 'string' } },
  strict: true,
});
const wsPort = Number(values['ws-port']);
const httpPort = Number(values['http-port']);
if (!Number.isInteger(wsPort) || !Number.isInteger(httpPort)) {
  process.stderr.write('usage: node reference_server.js --ws-port PORT --http-port PORT\n');
  process.exit(2);
}

/** Subscribed clients (confirmed handshake). */
const clients = new Set();
let seq = 0;

/** The {ClassName: {params}} subscription in `text`, or null when malformed. */
function parseSubscription(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    return null;
  }
  if (message === null || typeof message !== 'object' || Array.isArray(message)) return null;
  const keys = Object.keys(message);
  if (keys.length !== 1) return null;
  const params = message[keys[0]];
  if (params === null || typeof params !== 'object' || Array.isArray(params)) return null;
  return { [keys[0]]: params };
}

const wss = new WebSocketServer({ host: '127.0.0.1', port: wsPort, path: '/ws', perMessageDeflate: false,
                                  backlog: LISTEN_BACKLOG });
wss.on('connection', (ws) => {
  const timer = setTimeout(() => ws.close(1008, 'no subscription message'), HANDSHAKE_TIMEOUT_MS);
  ws.once('message', (data) => {
    clearTimeout(timer);
    const subscription = parseSubscription(data.toString());
    if (subscription === null) {
      ws.close(1008, 'expected {ClassName: {params}}');
      return;
    }
    ws.send(JSON.stringify(subscription));
    clients.add(ws);
  });
  ws.on('close', () => {
    clearTimeout(timer);
    clients.delete(ws);
  });
  ws.on('error', () => clients.delete(ws));
});

/** Broadcast each change, encoded once, to every client; return the last seq used. */
function publish(changes) {
  for (const change of changes) {
    seq += 1;
    const text = JSON.stringify({ doc_class: change.class, op: change.op, seq: String(seq).padStart(20, '0'),
                                  message: change.doc });
    for (const ws of clients) {
      if (ws.readyState === 1) ws.send(text);
    }
  }
  return String(seq).padStart(20, '0');
}

function respond(res, status, payload) {
  const body = JSON.stringify(payload);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/publish') {
    req.resume();
    respond(res, 404, { error: 'only POST /publish' });
    return;
  }
  const parts = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size <= MAX_HTTP_BODY_BYTES) parts.push(chunk);
  });
  req.on('end', () => {
    if (size > MAX_HTTP_BODY_BYTES) {
      respond(res, 413, { error: 'body too large' });
      return;
    }
    let changes;
    try {
      const payload = JSON.parse(Buffer.concat(parts).toString());
      changes = payload !== null && typeof payload === 'object' && 'changes' in payload ? payload.changes : [payload];
      if (!Array.isArray(changes) || !changes.every((c) => c && 'class' in c && 'op' in c && 'doc' in c)) {
        throw new Error("each change needs 'class', 'op' and 'doc'");
      }
    } catch (err) {
      respond(res, 400, { error: String(err.message || err) });
      return;
    }
    const lastSeq = publish(changes);
    respond(res, 200, { published: changes.length, last_seq: lastSeq });
  });
});
server.keepAliveTimeout = 0; // the publisher keeps its connections for the whole run
server.listen({ host: '127.0.0.1', port: httpPort, backlog: LISTEN_BACKLOG });

function stop() {
  server.close();
  for (const ws of clients) ws.terminate();
  wss.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
