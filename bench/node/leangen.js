#!/usr/bin/env node
// Lean load generator: N WebSocket subscribers in one Node.js event loop, for throughput (the headline).
//
// Same command line and stdout contract as loadgen.js (the `ws` one, kept for latency): connection i sends
// handshakes[i % V], waits for the confirmation (its first message: a JSON object holding the handshake's class
// key), then counts document messages (those beginning `{"doc_class"`); other messages are control messages.
// stdout: {"event":"ready"}, then {"event":"result"} (every connection got --expect documents, --timeout s after
// "ready", or SIGTERM/SIGINT), or {"event":"error"} (exit 1). The result has loadgen.js's fields, plus the
// lean ones below.
//
// Why: loadgen.js (the `ws` package: a Buffer, a JSON.parse and events per message) tops out near the
// servers' figures. Here the upgrade is written by hand on a `net` socket, every socket reads into ONE shared
// 1 MiB buffer (net's `onread`: no allocation per read, as many frames per read as the kernel holds), and
// frames are split from the header bytes (RFC 6455: server frames unmasked; fragments, ping and close
// handled; the client's frames are masked). Per document the work is a header, a 12-byte prefix test and
// the "seq" scan; the time is taken once per read, not per message.
//
// What is checked, per connection (the guarantees of loadgen.js):
// * loss: it counts its documents; `complete` = every connection received exactly --expect of them;
// * order: the "seq" string of every document is read from the frame's bytes (the first `"seq"` key, which
//   every server here writes right after doc_class and op) and compared bytewise with the previous one of the
//   connection: not strictly greater (reordered or duplicated) counts in `out_of_order`, as loadgen.js's
//   `message.seq > last` does (all servers' seqs have a fixed width per server, so bytewise = numeric order).
//   With the count equal to --expect and seqs strictly increasing, every document arrived once, in order.
//   A document with no readable "seq" counts in `seq_scan_failures`;
// * content: one document in --check-every per connection (its first included) is JSON-parsed and checked:
//   an object with doc_class, a string seq equal to the scanned one, an object `message`; mismatches count in
//   `cross_check_failures` (5 samples kept). Its "message.ts", when present, gives a latency sample
//   (`latency_ms`, sampled: use loadgen.js for latency).
//
// Usage: as loadgen.js, plus [--check-every 1000]. `ulimit -n` must exceed --connections.
'use strict';

const crypto = require('node:crypto');
const net = require('node:net');
const { parseArgs } = require('node:util');
const {
  WS_GUID, inPool, runGenerator, nowUs, cpuUs, emit, usageFor, numberReader, isSubscription, maskedFrame, frameSize, parseSlice,
} = require('./common');

const OPTIONS = {
  url: { type: 'string' },
  connections: { type: 'string', default: '1' },
  handshakes: { type: 'string' },
  expect: { type: 'string', default: '0' },
  timeout: { type: 'string', default: '60' },
  'connect-timeout': { type: 'string', default: '60' },
  concurrency: { type: 'string', default: '200' },
  'check-every': { type: 'string', default: '1000' },
};

const usage = usageFor('leangen');

function parseCommandLine() {
  const { values } = parseArgs({ options: OPTIONS, strict: true });
  const number = numberReader(values, usage);
  if (!values.url || !values.handshakes) usage('--url and --handshakes are required');
  const text = values.handshakes.startsWith('@')
    ? require('node:fs').readFileSync(values.handshakes.slice(1), 'utf8')
    : values.handshakes;
  let handshakes = JSON.parse(text);
  if (!Array.isArray(handshakes)) handshakes = [handshakes];
  if (handshakes.length === 0 || !handshakes.every(isSubscription)) {
    usage('--handshakes must be a JSON object {"Class": {...}} or a non-empty array of them');
  }
  const url = new URL(values.url);
  if (url.protocol !== 'ws:') usage('--url must be ws://');
  return {
    host: url.hostname,
    port: Number(url.port || 80),
    path: url.pathname + url.search,
    connections: Math.floor(number('connections', 1)),
    handshakes,
    expect: Math.floor(number('expect', 0)),
    timeoutMs: number('timeout', 0.001) * 1000,
    connectTimeoutMs: number('connect-timeout', 1) * 1000,
    concurrency: Math.floor(number('concurrency', 1)),
    checkEvery: Math.floor(number('check-every', 1)),
  };
}

const DOC_CLASS = Buffer.from('{"doc_class"');
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const SEQ_MAX = 64; // bytes of a seq kept per connection
const SEQ_SCAN_LIMIT = 256; // the "seq" key is looked for in a document's first bytes only
const READ_BUFFER = Buffer.allocUnsafe(1 << 20); // shared by every socket: data is handled before the next read
const HTTP_END = Buffer.from('\r\n\r\n');

/** Start of the value of the first `"seq"` key (the byte after its opening quote), or -1. */
function seqValueStart(data, start, end) {
  const limit = Math.min(end, start + SEQ_SCAN_LIMIT) - 6;
  for (let k = start + DOC_CLASS.length; k < limit; k++) {
    // `"seq"` then optional spaces, `:`, optional spaces, `"`
    if (data[k] === 0x73 && data[k - 1] === QUOTE && data[k + 1] === 0x65 && data[k + 2] === 0x71
        && data[k + 3] === QUOTE) {
      let m = k + 4;
      while (m < end && data[m] === 0x20) m++;
      if (m >= end || data[m] !== 0x3a) return -1;
      m++;
      while (m < end && data[m] === 0x20) m++;
      return m < end && data[m] === QUOTE ? m + 1 : -1;
    }
  }
  return -1;
}

/** Append-only latency samples in microseconds. */
function latencySummaryMs(samples) {
  if (samples.length === 0) return null;
  const all = Float64Array.from(samples).sort();
  const total = all.length;
  const rank = (p) => all[Math.max(0, Math.ceil((p / 100) * total) - 1)] / 1000;
  const sum = all.reduce((acc, value) => acc + value, 0);
  return { samples: total, mean: sum / total / 1000, p50: rank(50), p90: rank(90), p99: rank(99), max: all[total - 1] / 1000 };
}

class LeanGen {
  constructor(config) {
    this.config = config;
    const n = config.connections;
    this.sockets = new Array(n);
    this.state = new Uint8Array(n); // 0 HTTP upgrade, 1 waiting for the confirmation, 2 confirmed, 3 closed
    this.httpHead = new Array(n).fill(null);
    this.keys = new Array(n);
    this.pending = new Array(n); // connectOne's {resolve, reject}
    this.leftover = new Array(n).fill(null);
    this.fragments = new Array(n).fill(null);
    this.received = new Uint32Array(n);
    this.seqs = Buffer.alloc(n * SEQ_MAX);
    this.seqLengths = new Uint8Array(n); // 0: no seq yet
    this.completed = 0;
    this.outOfOrder = 0;
    this.seqScanFailures = 0;
    this.controlMessages = 0;
    this.closedEarly = 0;
    this.checked = 0;
    this.checkFailures = [];
    this.checkFailureCount = 0;
    this.latency = [];
    this.reads = 0;
    this.frames = 0;
    this.bytes = 0;
    this.docsInRead = 0;
    this.firstReceiptUs = 0;
    this.lastReceiptUs = 0;
    this.cpuAtFirstReceiptUs = 0;
    this.startUs = nowUs();
    this.readyUs = 0;
    this.finished = false;
  }

  async connectAll() {
    await inPool(this.config.connections, this.config.concurrency, this.config.connectTimeoutMs,
      (i) => this.connectOne(i));
    this.readyUs = nowUs();
  }

  /** Open connection i: TCP, the HTTP upgrade, the handshake frame; resolves on the confirmation. */
  connectOne(i) {
    return new Promise((resolve, reject) => {
      this.pending[i] = { resolve, reject };
      const key = crypto.randomBytes(16).toString('base64');
      this.keys[i] = key;
      const { host, port, path } = this.config;
      const socket = net.connect({
        host,
        port,
        onread: { buffer: READ_BUFFER, callback: (nread, buffer) => this.onRead(i, nread, buffer) },
      });
      this.sockets[i] = socket;
      socket.setNoDelay(true);
      socket.on('connect', () => {
        socket.write(`GET ${path} HTTP/1.1\r\nHost: ${host}:${port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n`
          + `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
      });
      socket.on('error', (err) => this.fail(i, err.message));
      socket.on('close', () => this.onClose(i, 'socket closed'));
    });
  }

  /** Connection i failed before its confirmation: reject its connectOne. */
  fail(i, message) {
    const pending = this.pending[i];
    if (pending !== null && this.state[i] < 2) {
      this.pending[i] = null;
      pending.reject(new Error(`connection ${i}: ${message}`));
    }
  }

  onClose(i, why) {
    if (this.state[i] === 3) return;
    const confirmed = this.state[i] === 2;
    this.state[i] = 3;
    if (!confirmed) this.fail(i, `closed before confirmation (${why})`);
    else if (!this.finished) this.closedEarly++;
  }

  /** net's onread callback: `nread` bytes of the shared buffer, valid until this returns. */
  onRead(i, nread, buffer) {
    this.reads++;
    this.bytes += nread;
    let chunk = buffer.subarray(0, nread);
    if (this.state[i] === 0) {
      chunk = this.onHttp(i, chunk);
      if (chunk === null || chunk.length === 0) return;
    }
    this.docsInRead = 0;
    let p = 0;
    const leftover = this.leftover[i];
    if (leftover !== null) { // a frame cut by the previous read: copy only that frame
      this.leftover[i] = null;
      const head = leftover.length >= 14 ? leftover : Buffer.concat([leftover, chunk.subarray(0, 14 - leftover.length)]);
      const total = frameSize(head, 0, head.length);
      if (total < 0 || total - leftover.length > chunk.length) {
        this.leftover[i] = Buffer.concat([leftover, chunk]);
        return;
      }
      p = total - leftover.length;
      this.parse(i, Buffer.concat([leftover, chunk.subarray(0, p)]), 0);
    }
    p = this.parse(i, chunk, p);
    if (p < chunk.length) this.leftover[i] = Buffer.from(chunk.subarray(p)); // copied: the buffer is reused
    if (this.docsInRead > 0) {
      const now = nowUs();
      if (this.firstReceiptUs === 0) {
        this.firstReceiptUs = now;
        this.cpuAtFirstReceiptUs = cpuUs();
      }
      this.lastReceiptUs = now;
      if (this.completed === this.config.connections && this.config.expect > 0 && this.readyUs > 0) {
        this.finish('complete');
      }
    }
  }

  /** Collect the HTTP answer; returns the bytes after it (frames), or null while incomplete or on failure. */
  onHttp(i, chunk) {
    const previous = this.httpHead[i];
    const head = previous === null ? Buffer.from(chunk) : Buffer.concat([previous, chunk]);
    const end = head.indexOf(HTTP_END);
    if (end < 0) {
      if (head.length > 16384) this.abort(i, 'HTTP answer too long');
      else this.httpHead[i] = head;
      return null;
    }
    this.httpHead[i] = null;
    const text = head.toString('latin1', 0, end);
    const lines = text.split('\r\n');
    if (!/^HTTP\/1\.1 101\b/.test(lines[0])) {
      this.abort(i, `${lines[0]} instead of an upgrade`);
      return null;
    }
    const accept = crypto.createHash('sha1').update(this.keys[i] + WS_GUID).digest('base64');
    const ok = lines.some((line) => {
      const colon = line.indexOf(':');
      return colon > 0 && line.slice(0, colon).trim().toLowerCase() === 'sec-websocket-accept'
        && line.slice(colon + 1).trim() === accept;
    });
    if (!ok) {
      this.abort(i, 'bad Sec-WebSocket-Accept');
      return null;
    }
    this.state[i] = 1;
    const handshake = this.config.handshakes[i % this.config.handshakes.length];
    this.sockets[i].write(maskedFrame(0x1, Buffer.from(JSON.stringify(handshake))));
    return head.subarray(end + HTTP_END.length);
  }

  abort(i, message) {
    this.fail(i, message);
    this.sockets[i].destroy();
  }

  /** Handle the whole frames of data from p on; returns where the first incomplete one begins. */
  parse(i, data, p) {
    const length = data.length;
    for (;;) {
      if (p + 2 > length) return p;
      const b0 = data[p];
      const b1 = data[p + 1];
      const size = b1 & 0x7f;
      let header = 2;
      let payload = size;
      if (size === 126) {
        if (p + 4 > length) return p;
        header = 4;
        payload = (data[p + 2] << 8) | data[p + 3];
      } else if (size === 127) {
        if (p + 10 > length) return p;
        header = 10;
        payload = Number(data.readBigUInt64BE(p + 2));
      }
      if (b1 & 0x80) header += 4; // a server never masks; tolerated, not unmasked
      const end = p + header + payload;
      if (end > length) return p;
      this.frames++;
      if (b0 === 0x81 && this.state[i] === 2) this.onMessage(i, data, p + header, end); // the usual case
      else this.onFrame(i, b0, data, p + header, end);
      if (this.state[i] === 3) return length;
      p = end;
    }
  }

  onFrame(i, b0, data, start, end) {
    const opcode = b0 & 0x0f;
    const fin = (b0 & 0x80) !== 0;
    if (opcode === 0x1 || opcode === 0x2 || opcode === 0x0) {
      if (fin && opcode !== 0x0) {
        this.onMessage(i, data, start, end);
        return;
      }
      const parts = this.fragments[i] || (this.fragments[i] = []);
      parts.push(Buffer.from(data.subarray(start, end)));
      if (fin) {
        const whole = Buffer.concat(parts);
        this.fragments[i] = null;
        this.onMessage(i, whole, 0, whole.length);
      }
    } else if (opcode === 0x8) {
      this.sockets[i].destroy();
      this.onClose(i, `close frame ${end - start >= 2 ? data.readUInt16BE(start) : ''}`);
    } else if (opcode === 0x9) {
      this.sockets[i].write(maskedFrame(0xA, data.subarray(start, end)));
    }
  }

  /** One whole message: bytes start..end of data. */
  onMessage(i, data, start, end) {
    if (this.state[i] !== 2) {
      const handshake = this.config.handshakes[i % this.config.handshakes.length];
      const className = Object.keys(handshake).find((k) => !k.startsWith('_'));
      const confirmation = parseSlice(data, start, end);
      if (confirmation === null || typeof confirmation !== 'object' || !(className in confirmation)) {
        this.abort(i, `unexpected confirmation ${data.toString('utf8', start, Math.min(end, start + 200))}`);
        return;
      }
      this.state[i] = 2;
      const pending = this.pending[i];
      this.pending[i] = null;
      pending.resolve();
      return;
    }
    for (let k = 0; k < DOC_CLASS.length; k++) {
      if (data[start + k] !== DOC_CLASS[k]) {
        this.controlMessages++;
        return;
      }
    }
    this.docsInRead++;
    const n = this.received[i]++;
    if (n + 1 === this.config.expect) this.completed++;
    // order: this seq > the connection's previous one, bytewise
    const s = seqValueStart(data, start, end);
    let e = s;
    if (s >= 0) while (e < end && data[e] !== QUOTE && data[e] !== BACKSLASH) e++;
    if (s < 0 || e >= end || data[e] !== QUOTE || e - s > SEQ_MAX || e === s) {
      this.seqScanFailures++;
    } else {
      const seqs = this.seqs;
      const base = i * SEQ_MAX;
      const lastLength = this.seqLengths[i];
      if (lastLength > 0) {
        const newLength = e - s;
        const common = newLength < lastLength ? newLength : lastLength;
        let cmp = 0;
        for (let k = 0; k < common; k++) {
          const d = data[s + k] - seqs[base + k];
          if (d !== 0) {
            cmp = d;
            break;
          }
        }
        if (cmp === 0) cmp = newLength - lastLength;
        if (cmp <= 0) this.outOfOrder++;
      }
      data.copy(seqs, base, s, e);
      this.seqLengths[i] = e - s;
    }
    if (n % this.config.checkEvery === 0) this.crossCheck(i, data, start, end, s, e);
  }

  /** Parse the whole message and compare it with what the scan found; take its latency sample. */
  crossCheck(i, data, start, end, s, e) {
    this.checked++;
    const message = parseSlice(data, start, end);
    const ok = message !== null && typeof message === 'object' && 'doc_class' in message
      && typeof message.seq === 'string' && s >= 0 && message.seq === data.toString('utf8', s, e)
      && message.message !== null && typeof message.message === 'object';
    if (!ok) {
      this.checkFailureCount++;
      if (this.checkFailures.length < 5) {
        this.checkFailures.push({ connection: i, message: data.toString('utf8', start, Math.min(end, start + 300)) });
      }
    }
    const ts = message && message.message && message.message.ts;
    if (typeof ts === 'number') this.latency.push(Math.max(0, nowUs() - ts));
  }

  finish(reason) {
    if (this.finished) return;
    this.finished = true;
    const finishUs = nowUs();
    const deliveries = this.received.reduce((sum, count) => sum + count, 0);
    const durationS = (this.lastReceiptUs - this.firstReceiptUs) / 1e6;
    const busyWallUs = finishUs - this.firstReceiptUs;
    const { user, system } = process.cpuUsage();
    const complete = this.config.expect > 0 && this.completed === this.config.connections
      && this.received.every((count) => count === this.config.expect);
    emit({
      event: 'result',
      generator: 'leangen',
      reason,
      complete,
      connections: this.config.connections,
      expect_per_connection: this.config.expect,
      deliveries,
      duration_s: durationS,
      deliveries_per_s: durationS > 0 ? deliveries / durationS : null,
      per_connection_min: this.received.reduce((min, count) => Math.min(min, count), Infinity),
      per_connection_max: this.received.reduce((max, count) => Math.max(max, count), 0),
      out_of_order: this.outOfOrder,
      seq_scan_failures: this.seqScanFailures,
      cross_checked: this.checked,
      cross_check_failures: this.checkFailureCount,
      cross_check_failure_samples: this.checkFailures,
      control_messages: this.controlMessages,
      closed_early: this.closedEarly,
      latency_ms: latencySummaryMs(this.latency), // sampled (one in --check-every per connection)
      socket_reads: this.reads,
      frames: this.frames,
      frames_per_read: this.reads > 0 ? this.frames / this.reads : null,
      bytes: this.bytes,
      connect_s: this.readyUs > 0 ? (this.readyUs - this.startUs) / 1e6 : null,
      cpu_ms: { user: user / 1000, system: system / 1000 },
      busy_fraction: this.firstReceiptUs > 0 && busyWallUs > 0 ? (cpuUs() - this.cpuAtFirstReceiptUs) / busyWallUs : null,
      rss_mb: process.memoryUsage.rss() / 2 ** 20,
    });
    for (const socket of this.sockets) if (socket) socket.destroy();
    process.exit(0);
  }
}

runGenerator(new LeanGen(parseCommandLine()));
