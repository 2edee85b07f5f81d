#!/usr/bin/env node
// Snapshot clients: N WebSocket subscribers in one Node.js event loop that all ask for a snapshot at once.
//
// 1. Opens --connections WebSockets (at most --concurrency attempts in flight) WITHOUT sending anything,
//    then prints {"event":"open", ...}.
// 2. On SIGUSR2 (or at once with --go-now) sends the handshake (--handshake, the same for every
//    connection: one view) on every socket in one synchronous loop (frames built beforehand), so the server
//    sees them all at once. Time 0 of every figure below is just before the first send.
// 3. Each connection takes the confirmation (its first message: a JSON object holding the handshake's class
//    key), then counts the document messages ({"doc_class": ...}) up to {"_control": "snapshot_done"}.
//    Every document's "_id" is read by a byte scan of the frame, without JSON.parse; one message in
//    --check-every (the first of each connection included) is fully parsed and cross-checked against the
//    scan (doc_class, op "I", the same _id). An _id must be --id-prefix followed by a decimal number below
//    --id-space: a bitmap per connection counts the distinct ones and the duplicates. Other messages are
//    control messages (parsed).
// 4. Prints {"event":"result", ...} once every connection got snapshot_done, --timeout seconds after the
//    handshakes, or on SIGTERM/SIGINT; then exits.
//
// Why not the `ws` package (as loadgen.js): its cost per message (a Buffer and an event per message, about
// 0.8 us here) made this process, not the server, the bottleneck at 1,000 x 10,000 documents (busy 0.97).
// So the upgrade is done with node:http and the frames (RFC 6455: server frames unmasked; fragments,
// close and ping handled) are read straight from each socket's chunks; the client's frames are masked.
//
// stdout carries JSON lines only. Each connection is a file descriptor: `ulimit -n` must exceed
// --connections.
'use strict';

const { parseArgs } = require('node:util');
const crypto = require('node:crypto');
const http = require('node:http');
const {
  WS_GUID, inPool, nowUs, cpuUs, emit, usageFor, numberReader, maskedFrame, frameSize, parseSlice,
} = require('./common');

const OPTIONS = {
  url: { type: 'string' },
  connections: { type: 'string', default: '1' },
  handshake: { type: 'string' },
  expect: { type: 'string', default: '0' },
  'id-prefix': { type: 'string', default: 'order-' },
  'id-space': { type: 'string', default: '1000000' },
  'check-every': { type: 'string', default: '1000' },
  timeout: { type: 'string', default: '60' },
  'connect-timeout': { type: 'string', default: '60' },
  concurrency: { type: 'string', default: '200' },
  'go-now': { type: 'boolean', default: false },
};

const usage = usageFor('snapshot_client');

function parseCommandLine() {
  const { values } = parseArgs({ options: OPTIONS, strict: true });
  const number = numberReader(values, usage);
  if (!values.url || !values.handshake) usage('--url and --handshake are required');
  const handshake = JSON.parse(values.handshake);
  const classes = Object.keys(handshake).filter((k) => !k.startsWith('_'));
  if (classes.length !== 1) usage('--handshake must subscribe to exactly one class');
  return {
    url: values.url,
    connections: Math.floor(number('connections', 1)),
    handshakeText: JSON.stringify(handshake),
    className: classes[0],
    expect: Math.floor(number('expect', 0)), // documents each snapshot should hold (0: not checked)
    idPrefixText: values['id-prefix'],
    idPrefix: Buffer.from(`"_id":"${values['id-prefix']}`),
    idSpace: Math.floor(number('id-space', 1)),
    checkEvery: Math.floor(number('check-every', 1)),
    timeoutMs: number('timeout', 0.001) * 1000,
    connectTimeoutMs: number('connect-timeout', 1) * 1000,
    concurrency: Math.floor(number('concurrency', 1)),
    goNow: values['go-now'],
  };
}

const DOC_CLASS = Buffer.from('{"doc_class"');
const ZERO = 0x30;
const QUOTE = 0x22;
const UNDERSCORE = 0x5f;
const COLON = 0x3a;
const ID_KEY = Buffer.from('"_id":"');
const ID_KEY_LAST = ID_KEY.length - 1;
/** Horspool shifts for ID_KEY: how far the search may jump after the byte under the key's last position. */
const ID_KEY_SHIFT = (() => {
  const shift = new Uint8Array(256).fill(ID_KEY.length);
  for (let k = 0; k < ID_KEY_LAST; k++) shift[ID_KEY[k]] = ID_KEY_LAST - k;
  return shift;
})();

/** Quantile q (0..1) of a sorted numeric array. */
function quantile(sorted, q) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

class SnapshotClients {
  constructor(config) {
    this.config = config;
    const n = config.connections;
    this.sockets = new Array(n);
    this.confirmed = new Uint8Array(n);
    this.done = new Uint8Array(n);
    this.docs = new Uint32Array(n); // documents before snapshot_done
    this.distinct = new Uint32Array(n);
    this.after = new Uint32Array(n); // documents after snapshot_done (live changes)
    this.bitmapBytes = Math.ceil(config.idSpace / 8);
    this.bitmaps = new Array(n);
    this.confirmUs = new Float64Array(n);
    this.firstDocUs = new Float64Array(n);
    this.doneUs = new Float64Array(n);
    this.doneSeqs = new Set();
    this.doneEpochs = new Set();
    this.duplicates = 0;
    this.badIds = 0;
    this.checked = 0;
    this.checkFailures = [];
    this.otherControl = {};
    this.closedEarly = [];
    this.completed = 0;
    this.messages = 0;
    this.chunks = 0; // socket reads ('data' events)
    this.bytes = 0;
    this.startUs = nowUs();
    this.openUs = 0;
    this.t0Us = 0;
    this.sentUs = 0;
    this.cpuAtT0Us = 0;
    this.finished = false;
    this.leftover = new Array(n).fill(null);
    this.fragments = new Array(n).fill(null);
    this.closedAt = new Uint8Array(n);
    this.handshakeFrames = new Array(n);
  }

  async openAll() {
    await inPool(this.config.connections, this.config.concurrency, this.config.connectTimeoutMs,
      (i) => this.openOne(i));
    this.openUs = nowUs();
    const text = Buffer.from(this.config.handshakeText);
    for (let i = 0; i < this.config.connections; i++) {
      this.bitmaps[i] = new Uint8Array(this.bitmapBytes);
      this.handshakeFrames[i] = maskedFrame(0x1, text);
    }
  }

  /** Open connection i: the HTTP upgrade, then frames read straight from the socket (see the header). */
  openOne(i) {
    return new Promise((resolve, reject) => {
      const url = new URL(this.config.url);
      const key = crypto.randomBytes(16).toString('base64');
      const req = http.request({
        host: url.hostname,
        port: url.port,
        path: url.pathname + url.search,
        agent: false,
        timeout: this.config.connectTimeoutMs,
        headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Key': key, 'Sec-WebSocket-Version': '13' },
      });
      req.on('upgrade', (res, socket, head) => {
        const accept = crypto.createHash('sha1').update(key + WS_GUID).digest('base64');
        if (res.headers['sec-websocket-accept'] !== accept) {
          socket.destroy();
          reject(new Error(`connection ${i}: bad Sec-WebSocket-Accept`));
          return;
        }
        socket.setNoDelay(true);
        this.sockets[i] = socket;
        socket.on('data', (chunk) => this.onData(i, chunk));
        socket.on('error', () => {});
        socket.on('close', () => this.onClose(i, null, ''));
        if (head.length) this.onData(i, head);
        resolve();
      });
      req.on('response', (res) => reject(new Error(`connection ${i}: HTTP ${res.statusCode} instead of an upgrade`)));
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', (err) => reject(new Error(`connection ${i}: ${err.message}`)));
      req.end();
    });
  }

  onClose(i, code, reason) {
    if (this.closedAt[i]) return;
    this.closedAt[i] = 1;
    if (!this.finished && !this.done[i]) {
      this.closedEarly.push({ connection: i, code, reason: String(reason).slice(0, 200) });
      if (this.closedEarly.length + this.completed >= this.config.connections) this.finish('closed');
    }
  }

  /** Split a chunk of the socket into frames. A frame cut by the end of a chunk waits for the next one: only
   * that frame is copied (leftover + the start of the next chunk), never the chunk. */
  onData(i, chunk) {
    this.chunks++;
    let p = 0;
    const leftover = this.leftover[i];
    if (leftover !== null) {
      this.leftover[i] = null;
      const head = leftover.length >= 14 ? leftover : Buffer.concat([leftover, chunk.subarray(0, 14 - leftover.length)]);
      const total = frameSize(head, 0, head.length);
      if (total < 0 || total - leftover.length > chunk.length) { // still incomplete (a tiny chunk or a large frame)
        this.leftover[i] = Buffer.concat([leftover, chunk]);
        return;
      }
      p = total - leftover.length;
      this.parse(i, Buffer.concat([leftover, chunk.subarray(0, p)]), 0);
    }
    p = this.parse(i, chunk, p);
    if (p < chunk.length) this.leftover[i] = chunk.subarray(p);
  }

  /** Handle the whole frames of data from p on; returns where the first incomplete one begins. */
  parse(i, data, p) {
    const length = data.length;
    for (;;) {
      const total = frameSize(data, p, length);
      if (total < 0 || p + total > length) return p;
      const b1 = data[p + 1];
      const size = b1 & 0x7f;
      const header = (size === 126 ? 4 : size === 127 ? 10 : 2) + (b1 & 0x80 ? 4 : 0); // a server never masks
      this.onFrame(i, data[p], data, p + header, p + total);
      p += total;
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
      const code = end - start >= 2 ? data.readUInt16BE(start) : null;
      this.onClose(i, code, data.toString('utf8', Math.min(end, start + 2), end));
      this.sockets[i].destroy();
    } else if (opcode === 0x9) {
      this.sockets[i].write(maskedFrame(0xA, data.subarray(start, end)));
    }
  }

  /** Send every handshake in one synchronous loop. */
  go() {
    if (this.t0Us) return;
    this.t0Us = nowUs();
    this.cpuAtT0Us = cpuUs();
    for (let i = 0; i < this.sockets.length; i++) this.sockets[i].write(this.handshakeFrames[i]);
    this.sentUs = nowUs();
    setTimeout(() => this.finish('timeout'), this.config.timeoutMs);
  }

  /** One whole message: bytes start..end of data. */
  onMessage(i, data, start, end) {
    this.messages++;
    this.bytes += end - start;
    if (!this.confirmed[i]) {
      const confirmation = parseSlice(data, start, end);
      if (confirmation === null || typeof confirmation !== 'object' || !(this.config.className in confirmation)) {
        this.onClose(i, 0, `unexpected confirmation ${data.toString('utf8', start, Math.min(end, start + 200))}`);
        this.sockets[i].destroy();
        return;
      }
      this.confirmed[i] = 1;
      this.confirmUs[i] = nowUs();
      return;
    }
    if (end - start > DOC_CLASS.length && startsWith(data, start, DOC_CLASS)) {
      this.onDocument(i, data, start, end);
      return;
    }
    const message = parseSlice(data, start, end);
    const kind = message && message._control;
    if (kind === 'snapshot_done' && !this.done[i]) {
      this.done[i] = 1;
      this.doneUs[i] = nowUs();
      this.doneSeqs.add(message.seq);
      this.doneEpochs.add(message.epoch);
      if (++this.completed === this.config.connections) this.finish('complete');
      return;
    }
    const name = kind || 'unknown';
    this.otherControl[name] = (this.otherControl[name] || 0) + 1;
  }

  onDocument(i, data, start, end) {
    if (this.done[i]) {
      this.after[i]++;
      return;
    }
    const n = this.docs[i]++;
    if (n === 0) this.firstDocUs[i] = nowUs();
    const id = this.scanId(data, start, end);
    if (id < 0) {
      this.badIds++;
    } else {
      const bitmap = this.bitmaps[i];
      const byte = id >> 3;
      const bit = 1 << (id & 7);
      if (bitmap[byte] & bit) this.duplicates++;
      else {
        bitmap[byte] |= bit;
        this.distinct[i]++;
      }
    }
    if (n % this.config.checkEvery === 0) this.crossCheck(i, data, start, end, id);
  }

  /** The number after --id-prefix in the message's "_id", or -1. `"_id":"` is found by a Horspool search in
   * JS (Buffer.indexOf, a native call per message, took half of this process's time). */
  scanId(data, start, end) {
    const prefix = this.config.idPrefix;
    let at = -1;
    for (let k = start + ID_KEY_LAST; k < end;) {
      const c = data[k];
      if (c === QUOTE && data[k - 1] === COLON && data[k - 2] === QUOTE && data[k - 3] === 0x64
          && data[k - 4] === 0x69 && data[k - 5] === UNDERSCORE && data[k - 6] === QUOTE) {
        at = k - ID_KEY_LAST;
        break;
      }
      k += ID_KEY_SHIFT[c];
    }
    if (at < 0 || at + prefix.length >= end) return -1;
    for (let m = ID_KEY.length; m < prefix.length; m++) if (data[at + m] !== prefix[m]) return -1; // --id-prefix
    let id = 0;
    let k = at + prefix.length;
    const first = k;
    for (; k < end; k++) {
      const c = data[k];
      if (c === QUOTE) break;
      const digit = c - ZERO;
      if (digit < 0 || digit > 9) return -1;
      id = id * 10 + digit;
    }
    if (k === first || k >= end || id >= this.config.idSpace) return -1;
    return id;
  }

  /** Parse the whole message and compare it with what the scan found. */
  crossCheck(i, data, start, end, id) {
    this.checked++;
    const message = parseSlice(data, start, end);
    const prefix = this.config.idPrefixText;
    const docId = message !== null && message.message ? message.message._id : null;
    const ok = message !== null && message.doc_class === this.config.className && message.op === 'I'
      && typeof message.seq === 'string' && typeof docId === 'string' && docId.startsWith(prefix)
      && Number(docId.slice(prefix.length)) === id;
    if (!ok && this.checkFailures.length < 5) {
      this.checkFailures.push({ connection: i, message: data.toString('utf8', start, Math.min(end, start + 300)) });
    }
  }

  finish(reason) {
    if (this.finished) return;
    this.finished = true;
    const endUs = nowUs();
    const rel = (us) => (us - this.t0Us) / 1e6;
    const n = this.config.connections;
    const pick = (array, mask) => Array.from(array).filter((_, i) => !mask || mask[i]).map(rel).sort((a, b) => a - b);
    const doneS = pick(this.doneUs, this.done);
    const confirmS = pick(this.confirmUs, this.confirmed);
    const firstDocS = pick(this.firstDocUs, this.docs);
    const stats = (sorted) => (sorted.length ? {
      min: sorted[0], p50: quantile(sorted, 0.5), p90: quantile(sorted, 0.9), max: sorted[sorted.length - 1],
    } : null);
    const min = (a) => a.reduce((m, x) => Math.min(m, x), Infinity);
    const max = (a) => a.reduce((m, x) => Math.max(m, x), 0);
    const cpuS = this.t0Us ? (cpuUs() - this.cpuAtT0Us) / 1e6 : 0;
    const wallS = this.t0Us ? (endUs - this.t0Us) / 1e6 : 0;
    const docs = this.docs.reduce((s, x) => s + x, 0);
    const expect = this.config.expect;
    const { user, system } = process.cpuUsage();
    emit({
      event: 'result',
      reason,
      connections: n,
      expect_per_connection: expect,
      all_done: this.completed === n,
      done: this.completed,
      // every connection got snapshot_done with exactly `expect` distinct documents and no duplicate
      complete: this.completed === n && (expect === 0 || (min(this.docs) === expect && max(this.docs) === expect
        && min(this.distinct) === expect)) && this.duplicates === 0 && this.badIds === 0
        && this.checkFailures.length === 0,
      handshakes_sent_s: (this.sentUs - this.t0Us) / 1e6,
      // seconds from just before the first handshake was sent
      confirmed_s: stats(confirmS),
      first_document_s: stats(firstDocS),
      done_s: stats(doneS),
      documents: docs,
      documents_per_s: doneS.length ? docs / doneS[doneS.length - 1] : null,
      per_connection_min: min(this.docs),
      per_connection_max: max(this.docs),
      distinct_min: min(this.distinct),
      distinct_max: max(this.distinct),
      duplicates: this.duplicates,
      bad_ids: this.badIds,
      cross_checked: this.checked,
      cross_check_failures: this.checkFailures,
      after_done: this.after.reduce((s, x) => s + x, 0),
      snapshot_done_seqs: this.doneSeqs.size,
      snapshot_done_epochs: this.doneEpochs.size,
      other_control: this.otherControl,
      closed_early: this.closedEarly.length,
      closed_early_sample: this.closedEarly.slice(0, 5),
      messages: this.messages,
      socket_reads: this.chunks,
      bytes: this.bytes,
      open_s: this.openUs ? (this.openUs - this.startUs) / 1e6 : null,
      // this process's CPU seconds from the handshakes to the result, and per wall second (1.0: saturated)
      cpu_s: cpuS,
      wall_s: wallS,
      busy_fraction: wallS > 0 ? cpuS / wallS : null,
      cpu_ms: { user: user / 1000, system: system / 1000 },
      rss_mb: process.memoryUsage.rss() / 2 ** 20,
    });
    for (const socket of this.sockets) if (socket) socket.destroy();
    process.exit(0);
  }
}

/** True when data[start..] begins with the bytes of prefix (a loop: cheaper than a native call per message). */
function startsWith(data, start, prefix) {
  for (let k = 0; k < prefix.length; k++) if (data[start + k] !== prefix[k]) return false;
  return true;
}

async function main() {
  const config = parseCommandLine();
  const clients = new SnapshotClients(config);
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => clients.finish('signal'));
  process.on('SIGUSR2', () => clients.go());
  try {
    await clients.openAll();
  } catch (err) {
    emit({ event: 'error', error: err.message });
    process.exit(1);
  }
  emit({ event: 'open', connections: config.connections, open_s: (clients.openUs - clients.startUs) / 1e6 });
  if (config.goNow) clients.go();
}

main();
