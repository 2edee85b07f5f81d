#!/usr/bin/env node
// Synthetic sender: measures the load generator's own limits.
//
// A minimal WebSocket server on ws://127.0.0.1:PORT/ws speaking the benchmark
// protocol (subscription message -> confirmation -> document frames) that does
// as little work per delivery as possible. It starts sending once --clients
// clients are subscribed, in one of two modes:
//
// * full speed (default): all --messages document frames are encoded and framed
//   ONCE beforehand, and the same bytes are written, --frames-per-write frames
//   per socket write, to every socket (each socket pumped independently, waiting
//   for 'drain' when its buffer is full). The deliveries/s the loadgen reports
//   is the loadgen's receive ceiling. Documents carry no "ts".
// * --rate R: one document every 1/R s, framed once with "ts" (CLOCK_MONOTONIC,
//   microseconds) and written to every socket. The latency the loadgen reports is
//   its own latency floor for that fan-out width.
//
// Documents are {"doc_class": "Order", "op": "I", "seq": <20-digit counter>,
// "message": {...--doc, "_id": "synthetic-<n>"}}, n from 1. At full speed, --last JSON is one more
// message written after them (e.g. the {"_control": "snapshot_done"} that snapshot_client.js waits for).
//
// stdout carries JSON lines: {"event":"listening"}, then {"event":"sent", ...}
// once every socket accepted every frame. The process exits on SIGTERM/SIGINT
// or after --timeout seconds.
//
// Usage (from bench/):
//   node synthetic_server.js --port 8790 --clients 100 --messages 2000 \
//     --doc '{"status": "open", "amount": 12.5}' [--frames-per-write 16 | --rate 20] [--timeout 300] \
//     [--last '{"_control": "snapshot_done"}']
'use strict';

const crypto = require('node:crypto');
const http = require('node:http');
const { once } = require('node:events');
const { parseArgs } = require('node:util');

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

function parseCommandLine() {
  const { values } = parseArgs({
    options: {
      port: { type: 'string' },
      clients: { type: 'string' },
      messages: { type: 'string' },
      doc: { type: 'string', default: '{}' },
      'frames-per-write': { type: 'string', default: '16' },
      rate: { type: 'string' },
      timeout: { type: 'string', default: '300' },
      last: { type: 'string' },
    },
    strict: true,
  });
  const check = (name, valid, what) => {
    const value = Number(values[name]);
    if (!valid(value)) {
      process.stderr.write(`synthetic_server: --${name} must be ${what}\n`);
      process.exit(2);
    }
    return value;
  };
  const integer = (name) => check(name, (v) => Number.isInteger(v) && v >= 1, 'an integer >= 1');
  const positive = (name) => check(name, (v) => Number.isFinite(v) && v > 0, 'a number > 0');
  return {
    port: integer('port'),
    clients: integer('clients'),
    messages: integer('messages'),
    doc: JSON.parse(values.doc),
    framesPerWrite: integer('frames-per-write'),
    ratePerS: values.rate === undefined ? null : positive('rate'),
    timeoutS: integer('timeout'),
    last: values.last === undefined ? null : JSON.parse(values.last),
  };
}

/** One unmasked server-to-client text frame holding `payload` (a Buffer). */
function textFrame(payload) {
  const length = payload.length;
  let header;
  if (length < 126) {
    header = Buffer.from([0x81, length]);
  } else if (length < 65536) {
    header = Buffer.alloc(4);
    header[0] = 0x81;
    header[1] = 126;
    header.writeUInt16BE(length, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = 0x81;
    header[1] = 127;
    header.writeBigUInt64BE(BigInt(length), 2);
  }
  return Buffer.concat([header, payload]);
}

/**
 * Decode the first complete masked client frame at the start of `buffer`.
 * Returns {payload, rest} or null when more bytes are needed.
 */
function readClientFrame(buffer) {
  if (buffer.length < 2) return null;
  let length = buffer[1] & 0x7f;
  let offset = 2;
  if (length === 126) {
    if (buffer.length < 4) return null;
    length = buffer.readUInt16BE(2);
    offset = 4;
  } else if (length === 127) {
    if (buffer.length < 10) return null;
    length = Number(buffer.readBigUInt64BE(2));
    offset = 10;
  }
  if (buffer.length < offset + 4 + length) return null;
  const mask = buffer.subarray(offset, offset + 4);
  const payload = Buffer.from(buffer.subarray(offset + 4, offset + 4 + length));
  for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
  return { payload, rest: buffer.subarray(offset + 4 + length) };
}

/** CLOCK_MONOTONIC in microseconds (the loadgen's latency clock). */
function nowUs() {
  return Number(process.hrtime.bigint() / 1000n);
}

/** The frame of document number `n`; `ts` (microseconds) is included unless undefined. */
function documentFrame(n, doc, ts) {
  const envelope = {
    doc_class: 'Order',
    op: 'I',
    seq: String(n).padStart(20, '0'),
    message: { ...doc, _id: `synthetic-${n}`, ts },
  };
  return textFrame(Buffer.from(JSON.stringify(envelope)));
}

/** All document frames, grouped into Buffers of `framesPerWrite` frames each. */
function buildChunks(config) {
  const frames = [];
  for (let n = 1; n <= config.messages; n++) frames.push(documentFrame(n, config.doc, undefined));
  const chunks = [];
  for (let i = 0; i < frames.length; i += config.framesPerWrite) {
    chunks.push(Buffer.concat(frames.slice(i, i + config.framesPerWrite)));
  }
  if (config.last !== null) chunks.push(textFrame(Buffer.from(JSON.stringify(config.last))));
  return chunks;
}

/** Write every chunk to `socket`, waiting for 'drain' whenever its buffer is full. */
async function pump(socket, chunks) {
  for (const chunk of chunks) {
    if (socket.destroyed) return;
    if (!socket.write(chunk)) await Promise.race([once(socket, 'drain'), once(socket, 'close')]);
  }
}

/** Write document n to every socket at n / ratePerS seconds; returns the bytes of one frame. */
async function sendPaced(sockets, config) {
  const startUs = nowUs();
  let frameBytes = 0;
  for (let n = 1; n <= config.messages; n++) {
    const waitMs = (startUs + ((n - 1) * 1e6) / config.ratePerS - nowUs()) / 1000;
    if (waitMs > 0) await new Promise((resolve) => setTimeout(resolve, waitMs));
    const frame = documentFrame(n, config.doc, nowUs());
    for (const socket of sockets) socket.write(frame);
    frameBytes = frame.length;
  }
  return frameBytes;
}

function emit(record) {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

function main() {
  const config = parseCommandLine();
  const chunks = config.ratePerS === null ? buildChunks(config) : null;
  const subscribed = [];

  const startSending = async () => {
    const startNs = process.hrtime.bigint();
    const cpuBefore = process.cpuUsage();
    let frameBytes;
    if (chunks === null) {
      frameBytes = await sendPaced(subscribed, config);
    } else {
      await Promise.all(subscribed.map((socket) => pump(socket, chunks)));
      frameBytes = chunks.reduce((sum, chunk) => sum + chunk.length, 0) / config.messages;
    }
    const cpu = process.cpuUsage(cpuBefore);
    emit({
      event: 'sent',
      mode: chunks === null ? `rate ${config.ratePerS}/s` : 'full speed',
      clients: subscribed.length,
      messages: config.messages,
      frame_bytes: frameBytes,
      seconds: Number(process.hrtime.bigint() - startNs) / 1e9,
      cpu_ms: (cpu.user + cpu.system) / 1000,
    });
  };

  const subscribe = (socket, handshakeBytes) => {
    const subscription = JSON.parse(handshakeBytes);
    socket.write(textFrame(Buffer.from(JSON.stringify(subscription))));
    subscribed.push(socket);
    if (subscribed.length === config.clients) startSending();
  };

  const server = http.createServer((_req, res) => {
    res.writeHead(426).end('WebSocket only\n');
  });
  server.on('upgrade', (req, socket, head) => {
    socket.on('error', () => socket.destroy());
    const key = req.headers['sec-websocket-key'];
    if (req.url !== '/ws' || !key) {
      socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    const accept = crypto.createHash('sha1').update(key + WS_GUID).digest('base64');
    socket.setNoDelay(true);
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
    );
    let pending = head;
    const onData = (data) => {
      pending = Buffer.concat([pending, data]);
      const frame = readClientFrame(pending);
      if (frame === null) return;
      socket.off('data', onData);
      socket.resume(); // discard anything the client sends later (e.g. a close frame)
      subscribe(socket, frame.payload);
    };
    socket.on('data', onData);
    onData(Buffer.alloc(0));
  });
  server.listen({ host: '127.0.0.1', port: config.port, backlog: 4096 }, () => emit({ event: 'listening' }));

  const stop = () => process.exit(0);
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  setTimeout(stop, config.timeoutS * 1000);
}

main();
