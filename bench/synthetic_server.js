#!/usr/bin/env node
// Synthetic sender: measures the load generator's own receive capacity.
//
// A minimal WebSocket server on ws://127.0.0.1:PORT/ws speaking the benchmark
// protocol (subscription message -> confirmation -> document frames) that does
// as little work per delivery as possible: all --messages document frames are
// encoded and framed ONCE before any client connects, and once --clients
// clients are subscribed the same pre-built bytes are written, --frames-per-write
// frames per socket write, to every socket (each socket is pumped independently,
// waiting for 'drain' when its buffer is full). Whatever deliveries/s the
// loadgen reports against it is the loadgen's ceiling, not a server's.
//
// Documents are {"doc_class": "Order", "op": "I", "seq": <20-digit counter>,
// "message": {...--doc, "_id": "synthetic-<n>"}}; they carry no "ts", so no latency.
//
// stdout carries JSON lines: {"event":"listening"}, then {"event":"sent", ...}
// once every socket accepted every frame. The process exits on SIGTERM/SIGINT
// or after --timeout seconds.
//
// Usage (from bench/):
//   node synthetic_server.js --port 8790 --clients 100 --messages 2000 \
//     --doc '{"status": "open", "amount": 12.5}' [--frames-per-write 16] [--timeout 300]
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
      timeout: { type: 'string', default: '300' },
    },
    strict: true,
  });
  const integer = (name) => {
    const value = Number(values[name]);
    if (!Number.isInteger(value) || value < 1) {
      process.stderr.write(`synthetic_server: --${name} must be an integer >= 1\n`);
      process.exit(2);
    }
    return value;
  };
  return {
    port: integer('port'),
    clients: integer('clients'),
    messages: integer('messages'),
    doc: JSON.parse(values.doc),
    framesPerWrite: integer('frames-per-write'),
    timeoutS: integer('timeout'),
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

/** All document frames, grouped into Buffers of `framesPerWrite` frames each. */
function buildChunks(config) {
  const frames = [];
  for (let n = 1; n <= config.messages; n++) {
    const envelope = {
      doc_class: 'Order',
      op: 'I',
      seq: String(n).padStart(20, '0'),
      message: { ...config.doc, _id: `synthetic-${n}` },
    };
    frames.push(textFrame(Buffer.from(JSON.stringify(envelope))));
  }
  const chunks = [];
  for (let i = 0; i < frames.length; i += config.framesPerWrite) {
    chunks.push(Buffer.concat(frames.slice(i, i + config.framesPerWrite)));
  }
  return chunks;
}

/** Write every chunk to `socket`, waiting for 'drain' whenever its buffer is full. */
async function pump(socket, chunks) {
  for (const chunk of chunks) {
    if (socket.destroyed) return;
    if (!socket.write(chunk)) await Promise.race([once(socket, 'drain'), once(socket, 'close')]);
  }
}

function emit(record) {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

function main() {
  const config = parseCommandLine();
  const chunks = buildChunks(config);
  const subscribed = [];

  const startSending = async () => {
    const startNs = process.hrtime.bigint();
    const cpuBefore = process.cpuUsage();
    await Promise.all(subscribed.map((socket) => pump(socket, chunks)));
    const cpu = process.cpuUsage(cpuBefore);
    emit({
      event: 'sent',
      clients: subscribed.length,
      messages: config.messages,
      frame_bytes: chunks.reduce((sum, chunk) => sum + chunk.length, 0) / config.messages,
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
