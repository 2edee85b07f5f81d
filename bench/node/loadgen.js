#!/usr/bin/env node
// Load generator: N WebSocket subscribers in one Node.js event loop.
//
// Each connection sends a subscription handshake (the list given by --handshakes
// is assigned round-robin: connection i gets handshakes[i % V]), waits for the
// server's confirmation (its first message, which must be a JSON object holding
// the handshake's class key), then counts the document messages (JSON objects
// with "doc_class"); other messages are counted as control messages and ignored.
//
// stdout carries JSON lines only:
//   {"event":"ready", ...}   once every connection is confirmed
//   {"event":"result", ...}  once every connection received --expect documents,
//                            or --timeout seconds after "ready", or on SIGTERM/SIGINT
//   {"event":"error", ...}   if a connection could not be opened or confirmed (exit 1)
//
// Latency: when a document's "message" holds "ts" (CLOCK_MONOTONIC in
// microseconds at publish time, as Python's time.monotonic_ns() // 1000 gives),
// publish-to-receipt latency is computed against process.hrtime (also
// CLOCK_MONOTONIC on Linux), so sender and loadgen must run on the same machine.
//
// Usage:
//   node loadgen.js --url ws://127.0.0.1:8765/ws --connections 1000 \
//     --handshakes '[{"Order": {"data_scope": [], "catalog": {}, "show_hidden": false, "start_seq": ""}}]' \
//     --expect 2000 --timeout 60
// Each connection is a file descriptor: `ulimit -n` must exceed --connections.
'use strict';

const { parseArgs } = require('node:util');
const WebSocket = require('ws');
const {
  inPool, runGenerator, nowUs, cpuUs, emit, usageFor, numberReader, isSubscription,
} = require('./common');

const OPTIONS = {
  url: { type: 'string' },
  connections: { type: 'string', default: '1' },
  handshakes: { type: 'string' },
  expect: { type: 'string', default: '0' },
  timeout: { type: 'string', default: '60' },
  'connect-timeout': { type: 'string', default: '60' },
  concurrency: { type: 'string', default: '200' },
};

/** Parse and validate the command line; exits with a usage message when invalid. */
const usage = usageFor('loadgen');

function parseCommandLine() {
  const { values } = parseArgs({ options: OPTIONS, strict: true });
  const number = numberReader(values, usage);
  if (!values.url || !values.handshakes) usage('--url and --handshakes are required');
  // `--handshakes @FILE` reads the JSON from FILE (many distinct handshakes exceed an argument's size limit)
  const text = values.handshakes.startsWith('@')
    ? require('node:fs').readFileSync(values.handshakes.slice(1), 'utf8')
    : values.handshakes;
  let handshakes = JSON.parse(text);
  if (!Array.isArray(handshakes)) handshakes = [handshakes];
  if (handshakes.length === 0 || !handshakes.every(isSubscription)) {
    usage('--handshakes must be a JSON object {"Class": {...}} or a non-empty array of them');
  }
  return {
    url: values.url,
    connections: Math.floor(number('connections', 1)),
    handshakes,
    expect: Math.floor(number('expect', 0)), // documents per connection; 0 = until timeout/signal
    timeoutMs: number('timeout', 0.001) * 1000, // after "ready"
    connectTimeoutMs: number('connect-timeout', 1) * 1000, // for all connections together
    concurrency: Math.floor(number('concurrency', 1)), // connection attempts in flight
  };
}

/** Append-only list of latency samples in microseconds, stored in typed-array chunks. */
class Samples {
  constructor() {
    this.chunks = [];
    this.current = new Uint32Array(65536);
    this.used = 0;
  }

  add(value) {
    if (this.used === this.current.length) {
      this.chunks.push(this.current);
      this.current = new Uint32Array(this.current.length * 2);
      this.used = 0;
    }
    this.current[this.used++] = value;
  }

  /** {samples, mean, p50, p90, p99, max} in milliseconds, or null when empty. */
  summaryMs() {
    const parts = [...this.chunks, this.current.subarray(0, this.used)];
    const total = parts.reduce((sum, part) => sum + part.length, 0);
    if (total === 0) return null;
    const all = new Uint32Array(total);
    let offset = 0;
    for (const part of parts) {
      all.set(part, offset);
      offset += part.length;
    }
    all.sort();
    const rank = (p) => all[Math.max(0, Math.ceil((p / 100) * total) - 1)] / 1000;
    const sum = all.reduce((acc, value) => acc + value, 0);
    return { samples: total, mean: sum / total / 1000, p50: rank(50), p90: rank(90), p99: rank(99), max: all[total - 1] / 1000 };
  }
}

class LoadGen {
  constructor(config) {
    this.config = config;
    const n = config.connections;
    this.sockets = new Array(n);
    this.received = new Uint32Array(n); // documents per connection
    this.lastSeq = new Array(n).fill(null);
    this.completed = 0; // connections that reached config.expect
    this.outOfOrder = 0;
    this.controlMessages = 0;
    this.closedEarly = 0;
    this.latency = new Samples();
    this.firstReceiptUs = 0;
    this.lastReceiptUs = 0;
    this.cpuAtFirstReceiptUs = 0;
    this.startUs = nowUs();
    this.readyUs = 0;
    this.finished = false;
  }

  /** Open every connection (at most config.concurrency attempts in flight) and wait for all confirmations. */
  async connectAll() {
    await inPool(this.config.connections, this.config.concurrency, this.config.connectTimeoutMs,
      (i) => this.connectOne(i));
    this.readyUs = nowUs();
  }

  /** Open connection i, send its handshake, resolve on the confirmation. */
  connectOne(i) {
    const handshake = this.config.handshakes[i % this.config.handshakes.length];
    const className = Object.keys(handshake)[0];
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.config.url, {
        perMessageDeflate: false,
        skipUTF8Validation: true,
        handshakeTimeout: this.config.connectTimeoutMs,
      });
      this.sockets[i] = ws;
      let confirmed = false;
      ws.on('open', () => ws.send(JSON.stringify(handshake)));
      ws.on('error', (err) => {
        if (!confirmed) reject(new Error(`connection ${i}: ${err.message}`));
      });
      ws.on('close', (code, reason) => {
        if (!confirmed) reject(new Error(`connection ${i} closed before confirmation: ${code} ${reason}`));
        else if (!this.finished) this.closedEarly++;
      });
      ws.on('message', (data) => {
        if (confirmed) {
          this.onMessage(i, data);
          return;
        }
        let confirmation = null;
        try {
          confirmation = JSON.parse(data);
        } catch {
          // reported below as an unexpected confirmation
        }
        if (confirmation === null || typeof confirmation !== 'object' || !(className in confirmation)) {
          reject(new Error(`connection ${i}: unexpected confirmation ${String(data).slice(0, 200)}`));
          return;
        }
        confirmed = true;
        resolve();
      });
    });
  }

  onMessage(i, data) {
    const now = nowUs();
    const message = JSON.parse(data);
    if (message === null || typeof message !== 'object' || !('doc_class' in message)) {
      this.controlMessages++;
      return;
    }
    if (this.firstReceiptUs === 0) {
      this.firstReceiptUs = now;
      this.cpuAtFirstReceiptUs = cpuUs();
    }
    this.lastReceiptUs = now;
    const last = this.lastSeq[i];
    if (last !== null && !(message.seq > last)) this.outOfOrder++;
    this.lastSeq[i] = message.seq;
    const ts = message.message && message.message.ts;
    if (typeof ts === 'number') this.latency.add(Math.max(0, now - ts));
    // Before "ready" (documents racing the last confirmations) main() does the final check.
    if (++this.received[i] === this.config.expect && ++this.completed === this.config.connections && this.readyUs > 0) {
      this.finish('complete');
    }
  }

  /** Print the result line, close every connection and exit. */
  finish(reason) {
    if (this.finished) return;
    this.finished = true;
    const finishUs = nowUs();
    const deliveries = this.received.reduce((sum, count) => sum + count, 0);
    const durationS = (this.lastReceiptUs - this.firstReceiptUs) / 1e6;
    const busyWallUs = finishUs - this.firstReceiptUs;
    const { user, system } = process.cpuUsage();
    emit({
      event: 'result',
      reason,
      complete: this.config.expect > 0 && this.completed === this.config.connections,
      connections: this.config.connections,
      expect_per_connection: this.config.expect,
      deliveries,
      duration_s: durationS,
      deliveries_per_s: durationS > 0 ? deliveries / durationS : null,
      per_connection_min: this.received.reduce((min, count) => Math.min(min, count), Infinity),
      per_connection_max: this.received.reduce((max, count) => Math.max(max, count), 0),
      out_of_order: this.outOfOrder,
      control_messages: this.controlMessages,
      closed_early: this.closedEarly,
      latency_ms: this.latency.summaryMs(),
      connect_s: this.readyUs > 0 ? (this.readyUs - this.startUs) / 1e6 : null,
      cpu_ms: { user: user / 1000, system: system / 1000 },
      // CPU seconds per wall second from the first receipt to the end; near 1.0 = loadgen saturated.
      busy_fraction: this.firstReceiptUs > 0 && busyWallUs > 0 ? (cpuUs() - this.cpuAtFirstReceiptUs) / busyWallUs : null,
      rss_mb: process.memoryUsage.rss() / 2 ** 20,
    });
    for (const ws of this.sockets) if (ws) ws.terminate();
    process.exit(0);
  }
}

runGenerator(new LoadGen(parseCommandLine()));
