// The page's video work, off the main thread so that it never delays the audio there:
// encoding our camera and screen (WebCodecs VP8, software, realtime) into WebSocket
// messages for the node, and decoding the members' frames onto their canvases.
//
// Main thread -> worker: {type: 'send', name, spec, readable, diag} (a track's frames),
// {type: 'stop', name}, {type: 'key', name} (force a keyframe), {type: 'canvas', key,
// canvas} (an OffscreenCanvas for a member's track), {type: 'frame', key, buf} (a message
// from the node), {type: 'drop', key}, {type: 'diag', id} (full test data).
// Worker -> main: {type: 'out', parts} (messages for the node), {type: 'stats', ...},
// {type: 'diag', id, data}, {type: 'log', text}.
'use strict';

// One part of a frame per WebSocket message, under the node's 64 KiB limit.
const MAX_PART = 60 * 1024;
const PART_HEADER = 24;
// An encoder with this many frames waiting is behind: new frames are skipped.
const MAX_ENCODE_QUEUE = 3;
const KINDS = { camera: 1, screen: 2 };
// Decoded frames held for lip sync, per member's track; beyond that the oldest is drawn.
const MAX_HELD = 8;
// Longest a decoded frame is held for lip sync, ms.
const MAX_SYNC_MS = 300;
let DIAG = false;

const wallNow = () => performance.timeOrigin + performance.now();

const stats = { sent: {}, recv: {}, skipped: { camera: 0, screen: 0 }, configs: {} };
const lists = { sent: { camera: [], screen: [] }, recv: {} };

function log(text) {
  postMessage({ type: 'log', text });
}

// A test feeds the camera frames that carry their number in a top band of 16 black or white
// cells: bits 0-11 the number, 12-15 a check. Returns the number, or null.
async function readNumber(frame) {
  try {
    const w = frame.visibleRect.width;
    const band = Math.max(2, Math.round(frame.visibleRect.height / 9) & ~1);
    const rect = { x: frame.visibleRect.x, y: frame.visibleRect.y, width: w, height: band };
    const buf = new Uint8Array(frame.allocationSize({ rect }));
    const layout = await frame.copyTo(buf, { rect });
    const rgb = /^(RGB|BGR)/.test(frame.format || '');
    const step = rgb ? 4 : 1;
    const { offset, stride } = layout[0];
    let v = 0;
    for (let i = 0; i < 16; i++) {
      const cx = Math.floor((i + 0.5) * w / 16);
      let sum = 0;
      for (let dy = -2; dy <= 2; dy++) {
        for (let dx = -2; dx <= 2; dx++) {
          sum += buf[offset + (band / 2 + dy) * stride + (cx + dx) * step + (rgb ? 1 : 0)];
        }
      }
      if (sum / 25 > 128) v |= 1 << i;
    }
    const num = v & 0xfff;
    const check = (num ^ (num >> 4) ^ (num >> 8)) & 0xf;
    return check === v >> 12 ? num : null;
  } catch (_) {
    return null;
  }
}

// ---------- sending ----------

class Sender {
  constructor(name, spec, readable) {
    this.name = name;
    this.spec = spec;
    this.reader = readable.getReader();
    this.encoder = null;
    this.config = null;
    this.frameId = 0;
    this.captured = new Map(); // frame timestamp -> wall time of capture
    this.lastTaken = 0;
    this.forceKey = false;
    this.stopped = false;
    stats.sent[name] = { frames: 0, bytes: 0, keyframes: 0 };
    this.loop();
  }

  async configure(frame) {
    const s = this.spec;
    const scale = Math.min(1, s.width / frame.displayWidth, s.height / frame.displayHeight);
    const config = {
      codec: 'vp8',
      width: Math.round(frame.displayWidth * scale / 2) * 2,
      height: Math.round(frame.displayHeight * scale / 2) * 2,
      bitrate: s.bitrate,
      framerate: s.fps,
      latencyMode: 'realtime',
      hardwareAcceleration: 'no-preference',
      scalabilityMode: 'L1T2',
    };
    try {
      if (!(await VideoEncoder.isConfigSupported(config)).supported) delete config.scalabilityMode;
    } catch (_) {
      delete config.scalabilityMode;
    }
    this.encoder = new VideoEncoder({
      output: (chunk, meta) => this.onChunk(chunk, meta),
      error: (e) => log(`${this.name} encoder: ${e.message}`),
    });
    this.encoder.configure(config);
    this.config = config;
    stats.configs[this.name] = config;
  }

  async loop() {
    while (!this.stopped) {
      let r;
      try { r = await this.reader.read(); } catch (_) { return; }
      if (r.done) return;
      const frame = r.value;
      const t = wallNow();
      if (!this.encoder) await this.configure(frame);
      if (this.take(t)) this.encode(frame, t);
      frame.close();
    }
  }

  // Whether this frame goes to the encoder: the track's frame rate, and an encoder that
  // keeps up.
  take(t) {
    const early = t - this.lastTaken < 1000 / this.spec.fps - 10;
    if (early || this.encoder.state !== 'configured' || this.encoder.encodeQueueSize >= MAX_ENCODE_QUEUE) {
      stats.skipped[this.name]++;
      return false;
    }
    this.lastTaken = t;
    return true;
  }

  encode(frame, t) {
    this.captured.set(frame.timestamp, t);
    if (this.captured.size > 64) this.captured.delete(this.captured.keys().next().value);
    if (DIAG && lists.sent[this.name].length < 20000) {
      const copy = frame.clone();
      const list = lists.sent[this.name];
      readNumber(copy).then((n) => list.push([n, t])).finally(() => copy.close());
    }
    const keyFrame = this.forceKey;
    this.forceKey = false;
    this.encoder.encode(frame, { keyFrame });
  }

  onChunk(chunk, meta) {
    const layer = (meta && meta.svc && meta.svc.temporalLayerId) || 0;
    const t = this.captured.get(chunk.timestamp) || wallNow();
    this.captured.delete(chunk.timestamp);
    const data = new Uint8Array(chunk.byteLength);
    chunk.copyTo(data);
    const key = chunk.type === 'key';
    const s = stats.sent[this.name];
    s.frames++;
    s.bytes += data.length;
    if (key) s.keyframes++;
    const parts = this.parts(data, key, layer, t);
    if (parts) postMessage({ type: 'out', parts }, parts);
  }

  parts(data, key, layer, t) {
    const n = Math.ceil(data.length / MAX_PART);
    if (n > 255) return null;
    const id = this.frameId++ >>> 0;
    const out = [];
    for (let p = 0; p < n; p++) {
      const body = data.subarray(p * MAX_PART, (p + 1) * MAX_PART);
      const buf = new ArrayBuffer(PART_HEADER + body.length);
      const v = new DataView(buf);
      v.setUint8(0, 3);
      v.setUint8(1, KINDS[this.name]);
      v.setUint8(2, key ? 1 : 0);
      v.setUint8(3, layer);
      v.setUint8(4, p);
      v.setUint8(5, n);
      v.setUint16(8, this.config.width, true);
      v.setUint16(10, this.config.height, true);
      v.setUint32(12, id, true);
      v.setFloat64(16, t, true);
      new Uint8Array(buf, PART_HEADER).set(body);
      out.push(buf);
    }
    return out;
  }

  stop() {
    this.stopped = true;
    this.reader.cancel().catch(() => {});
    if (this.encoder && this.encoder.state !== 'closed') this.encoder.close();
  }
}

const senders = {};

// ---------- receiving ----------

class Remote {
  constructor(key, canvas) {
    this.key = key;
    this.canvas = canvas;
    this.ctx2d = canvas.getContext('2d');
    this.decoder = null;
    this.captures = new Map(); // chunk timestamp -> the sender's capture time, ms
    this.held = []; // decoded frames waiting for their time: {frame, due}
    this.timer = null;
    this.delayMs = 0;
    stats.recv[key] = { decoded: 0, errors: 0, width: 0, height: 0, delayMs: 0 };
    lists.recv[key] = lists.recv[key] || [];
  }

  newDecoder() {
    this.decoder = new VideoDecoder({
      output: (frame) => this.hold(frame),
      error: (e) => {
        log(`${this.key} decoder: ${e.message}`);
        stats.recv[this.key].errors++;
      },
    });
  }

  decode(buf) {
    const v = new DataView(buf);
    const plen = v.getUint8(32);
    const key = v.getUint8(2) === 1;
    const seq = v.getUint32(12, true);
    if (!this.decoder || this.decoder.state === 'closed') this.newDecoder();
    if (this.decoder.state === 'unconfigured') {
      if (!key) return;
      this.decoder.configure({ codec: 'vp8', hardwareAcceleration: 'no-preference', optimizeForLatency: true });
    }
    const data = new Uint8Array(buf, 33 + plen);
    this.captures.set(seq * 1000, v.getFloat64(16, true));
    if (this.captures.size > 64) this.captures.delete(this.captures.keys().next().value);
    this.decoder.decode(new EncodedVideoChunk({ type: key ? 'key' : 'delta', timestamp: seq * 1000, data }));
  }

  // Lip sync: a frame is drawn when the member's audio captured with it plays here (the
  // main thread tells the delay), at most MAX_SYNC_MS after it was decoded.
  hold(frame) {
    const now = wallNow();
    const capture = this.captures.get(frame.timestamp);
    this.captures.delete(frame.timestamp);
    const due = capture === undefined ? now : capture + this.delayMs;
    this.held.push({ frame, due: Math.min(Math.max(due, now), now + MAX_SYNC_MS) });
    this.pump();
  }

  pump() {
    clearTimeout(this.timer);
    const now = wallNow();
    while (this.held.length && (this.held[0].due <= now || this.held.length > MAX_HELD)) {
      this.draw(this.held.shift().frame);
    }
    if (this.held.length) this.timer = setTimeout(() => this.pump(), this.held[0].due - now);
  }

  draw(frame) {
    if (this.canvas.width !== frame.displayWidth || this.canvas.height !== frame.displayHeight) {
      this.canvas.width = frame.displayWidth;
      this.canvas.height = frame.displayHeight;
    }
    this.ctx2d.drawImage(frame, 0, 0);
    const drawn = wallNow();
    const s = stats.recv[this.key];
    s.decoded++;
    s.width = frame.displayWidth;
    s.height = frame.displayHeight;
    s.last = drawn;
    const list = lists.recv[this.key];
    if (!DIAG || list.length >= 20000) {
      frame.close();
      return;
    }
    const entry = [null, drawn];
    list.push(entry);
    readNumber(frame).then((n) => { entry[0] = n; }).finally(() => frame.close());
  }

  close() {
    clearTimeout(this.timer);
    for (const h of this.held) h.frame.close();
    this.held = [];
    if (this.decoder && this.decoder.state !== 'closed') this.decoder.close();
  }
}

const remotes = new Map();

// ---------- messages ----------

const handlers = {
  send(m) {
    DIAG = m.diag;
    if (senders[m.name]) senders[m.name].stop();
    senders[m.name] = new Sender(m.name, m.spec, m.readable);
  },
  stop(m) {
    if (senders[m.name]) senders[m.name].stop();
    delete senders[m.name];
  },
  key(m) {
    if (senders[m.name]) senders[m.name].forceKey = true;
  },
  canvas(m) {
    DIAG = m.diag;
    if (remotes.has(m.key)) remotes.get(m.key).close();
    remotes.set(m.key, new Remote(m.key, m.canvas));
  },
  frame(m) {
    const r = remotes.get(m.key);
    if (!r) return;
    try { r.decode(m.buf); } catch (e) { log(`${m.key} decode: ${e.message}`); }
  },
  sync(m) {
    const r = remotes.get(m.key);
    if (!r) return;
    r.delayMs = m.delayMs;
    stats.recv[m.key].delayMs = m.delayMs;
  },
  drop(m) {
    const r = remotes.get(m.key);
    if (r) r.close();
    remotes.delete(m.key);
  },
  diag(m) {
    postMessage({ type: 'diag', id: m.id, data: { stats, lists } });
  },
};

onmessage = (e) => {
  const h = handlers[e.data.type];
  if (h) h(e.data);
};

setInterval(() => postMessage({ type: 'stats', stats }), 200);
