// What the Node.js load generators share (loadgen.js, leangen.js, snapshot_client.js): clocks, the stdout
// record, command-line checks, and the raw WebSocket framing of the two that speak it over `net` sockets
// (RFC 6455: a client masks its frames, a server's come unmasked).
'use strict';

const crypto = require('node:crypto');

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** Monotonic clock (CLOCK_MONOTONIC) in microseconds. */
function nowUs() {
  return Number(process.hrtime.bigint() / 1000n);
}

/** CPU time (user + system) of this process, in microseconds. */
function cpuUs() {
  const { user, system } = process.cpuUsage();
  return user + system;
}

/** One JSON record a line on stdout: the generators' whole output contract. */
function emit(record) {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

/** ``usage(message)`` for program ``name``: the message on stderr, exit 2. */
function usageFor(name) {
  return (message) => {
    process.stderr.write(`${name}: ${message}\n`);
    process.exit(2);
  };
}

/** ``number(option, min)``: the option's value as a number, or usage() when it is not one >= min. */
function numberReader(values, usage) {
  return (name, min) => {
    const value = Number(values[name]);
    if (!Number.isFinite(value) || value < min) usage(`--${name} must be a number >= ${min}`);
    return value;
  };
}

/** Run ``task(i)`` for i in [0, count), at most ``concurrency`` at once; reject after ``timeoutMs``. */
async function inPool(count, concurrency, timeoutMs, task) {
  let next = 0;
  const worker = async () => {
    while (next < count) await task(next++);
  };
  const workers = Array.from({ length: Math.min(concurrency, count) }, worker);
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error('connect timeout')), timeoutMs);
  });
  try {
    await Promise.race([Promise.all(workers), deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** The stdout contract of loadgen.js and leangen.js around ``gen`` (connectAll, finish, completed, readyUs,
 * startUs, config): "ready" once every connection is confirmed (or "error", exit 1), then the result when each
 * got ``--expect`` documents, at ``--timeout`` or on SIGINT/SIGTERM. */
async function runGenerator(gen) {
  const { config } = gen;
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => gen.finish('signal'));
  try {
    await gen.connectAll();
  } catch (err) {
    emit({ event: 'error', error: err.message });
    process.exit(1);
  }
  emit({ event: 'ready', connections: config.connections, connect_s: (gen.readyUs - gen.startUs) / 1e6 });
  if (config.expect > 0 && gen.completed === config.connections) gen.finish('complete');
  setTimeout(() => gen.finish('timeout'), config.timeoutMs);
}

/** A handshake: one class name, plus optional `_header` (credentials) and `_options` entries. */
function isSubscription(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
    && Object.keys(value).filter((k) => !k.startsWith('_')).length === 1;
}

/** A client frame (masked, as RFC 6455 requires of a client): FIN, ``opcode``, ``payload``. */
function maskedFrame(opcode, payload) {
  const size = payload.length;
  const header = size < 126 ? 2 : size < 65536 ? 4 : 10;
  const frame = Buffer.allocUnsafe(header + 4 + size);
  frame[0] = 0x80 | opcode;
  if (header === 2) frame[1] = 0x80 | size;
  else if (header === 4) {
    frame[1] = 0x80 | 126;
    frame.writeUInt16BE(size, 2);
  } else {
    frame[1] = 0x80 | 127;
    frame.writeBigUInt64BE(BigInt(size), 2);
  }
  const mask = crypto.randomBytes(4);
  mask.copy(frame, header);
  for (let k = 0; k < size; k++) frame[header + 4 + k] = payload[k] ^ mask[k & 3];
  return frame;
}

/** Bytes of the frame at data[p] (header, mask key and payload), or -1 when its header is not all there. */
function frameSize(data, p, length) {
  if (p + 2 > length) return -1;
  const b1 = data[p + 1];
  const masked = b1 & 0x80 ? 4 : 0;
  const size = b1 & 0x7f;
  if (size < 126) return 2 + masked + size;
  if (size === 126) return p + 4 > length ? -1 : 4 + masked + data.readUInt16BE(p + 2);
  return p + 10 > length ? -1 : 10 + masked + Number(data.readBigUInt64BE(p + 2));
}

/** The JSON value of data[start:end], or null when it is not JSON. */
function parseSlice(data, start, end) {
  try {
    return JSON.parse(data.toString('utf8', start, end));
  } catch {
    return null;
  }
}

module.exports = {
  WS_GUID, inPool, runGenerator, nowUs, cpuUs, emit, usageFor, numberReader, isSubscription, maskedFrame, frameSize,
  parseSlice,
};
