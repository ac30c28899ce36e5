// Video in the call page: the camera and a shared screen are encoded here with WebCodecs
// (VP8, software, realtime) and handed to the node, which seals them end to end and sends
// them to the others; what the node hands back (decrypted, in order, decodable) is decoded
// here and drawn into the member's tile, a shared screen on the large stage.
// Uses app.js's globals: ui, send, diag, DIAG, $, el.
'use strict';

const TRACKS = {
  camera: { kind: 1, width: 640, height: 360, fps: 30, bitrate: 900_000 },
  screen: { kind: 2, width: 1280, height: 720, fps: 15, bitrate: 1_500_000 },
};
const KIND_NAMES = { 1: 'camera', 2: 'screen' };
// One part of a frame per WebSocket message, under the node's 64 KiB limit.
const MAX_PART = 60 * 1024;
const PART_HEADER = 24;
// An encoder with this many frames waiting is behind: new frames are skipped.
const MAX_ENCODE_QUEUE = 3;
// A remote track with no frame for this long is taken as stopped.
const STALE_MS = 2000;

const wallNow = () => performance.timeOrigin + performance.now();

// What tests read back (with `diag`): per frame sent, its number (read from the pixels)
// and capture time; per frame drawn, its number and when it was drawn.
const vdiag = {
  sent: { camera: [], screen: [] },
  recv: {},
  errors: [],
  configs: {},
  skipped: { camera: 0, screen: 0 },
  keyframesAsked: { camera: 0, screen: 0 },
};
diag.video = vdiag;

function vlog(what) {
  if (vdiag.errors.length < 100) vdiag.errors.push(`${Date.now()} ${what}`);
}

// ---------- frame numbers (tests) ----------

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
      let n = 0;
      for (let dy = -2; dy <= 2; dy++) {
        for (let dx = -2; dx <= 2; dx++) {
          sum += buf[offset + (band / 2 + dy) * stride + (cx + dx) * step + (rgb ? 1 : 0)];
          n++;
        }
      }
      if (sum / n > 128) v |= 1 << i;
    }
    const num = v & 0xfff;
    const check = (num ^ (num >> 4) ^ (num >> 8)) & 0xf;
    return check === v >> 12 ? num : null;
  } catch (e) {
    return null;
  }
}

// ---------- sending ----------

class Sender {
  constructor(name) {
    this.name = name;
    this.spec = TRACKS[name];
    this.stream = null;
    this.encoder = null;
    this.reader = null;
    this.frameId = 0;
    this.captured = new Map(); // frame timestamp -> wall time of capture
    this.lastTaken = 0;
    this.forceKey = false;
  }

  async start(stream) {
    this.stream = stream;
    const track = stream.getVideoTracks()[0];
    track.addEventListener('ended', () => stopTrack(this.name));
    this.reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
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
    if (!(await VideoEncoder.isConfigSupported(config)).supported) delete config.scalabilityMode;
    this.encoder = new VideoEncoder({
      output: (chunk, meta) => this.onChunk(chunk, meta),
      error: (e) => vlog(`${this.name} encoder: ${e.message}`),
    });
    this.encoder.configure(config);
    vdiag.configs[this.name] = config;
  }

  async loop() {
    for (;;) {
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
      vdiag.skipped[this.name]++;
      return false;
    }
    this.lastTaken = t;
    return true;
  }

  encode(frame, t) {
    this.captured.set(frame.timestamp, t);
    if (this.captured.size > 64) this.captured.delete(this.captured.keys().next().value);
    if (DIAG && vdiag.sent[this.name].length < 20000) {
      const copy = frame.clone();
      const list = vdiag.sent[this.name];
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
    const cfg = this.encoder ? vdiag.configs[this.name] : null;
    this.sendParts(data, chunk.type === 'key', layer, cfg, t);
  }

  sendParts(data, key, layer, cfg, t) {
    if (!ui.ws || ui.ws.readyState !== WebSocket.OPEN) return;
    const parts = Math.ceil(data.length / MAX_PART);
    if (parts > 255) return;
    const id = this.frameId++ >>> 0;
    for (let p = 0; p < parts; p++) {
      const body = data.subarray(p * MAX_PART, (p + 1) * MAX_PART);
      const buf = new ArrayBuffer(PART_HEADER + body.length);
      const v = new DataView(buf);
      v.setUint8(0, 3);
      v.setUint8(1, this.spec.kind);
      v.setUint8(2, key ? 1 : 0);
      v.setUint8(3, layer);
      v.setUint8(4, p);
      v.setUint8(5, parts);
      v.setUint16(8, cfg ? cfg.width : 0, true);
      v.setUint16(10, cfg ? cfg.height : 0, true);
      v.setUint32(12, id, true);
      v.setFloat64(16, t, true);
      new Uint8Array(buf, PART_HEADER).set(body);
      ui.ws.send(buf);
    }
  }

  stop() {
    if (this.reader) this.reader.cancel().catch(() => {});
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    if (this.encoder && this.encoder.state !== 'closed') this.encoder.close();
    this.encoder = null;
  }
}

const senders = { camera: null, screen: null };

async function startCamera() {
  const dev = $('camera-select').value;
  const stream = await navigator.mediaDevices.getUserMedia({
    video: {
      deviceId: dev ? { exact: dev } : undefined,
      width: { ideal: TRACKS.camera.width },
      height: { ideal: TRACKS.camera.height },
      frameRate: { ideal: TRACKS.camera.fps },
    },
  });
  stopTrack('camera');
  const s = new Sender('camera');
  senders.camera = s;
  await s.start(stream);
  selfView(stream);
  await fillCameras();
}

async function startScreen() {
  const stream = await navigator.mediaDevices.getDisplayMedia({
    video: { width: { max: TRACKS.screen.width }, height: { max: TRACKS.screen.height }, frameRate: { max: TRACKS.screen.fps } },
    audio: false,
  });
  stopTrack('screen');
  const s = new Sender('screen');
  senders.screen = s;
  await s.start(stream);
}

function stopTrack(name) {
  const s = senders[name];
  senders[name] = null;
  if (s) s.stop();
  if (name === 'camera') selfView(null);
  renderVideoButtons();
}

function selfView(stream) {
  const me = ui.server && ui.server.account && ui.server.account.peer_id;
  const tile = me && document.querySelector(`.tile[data-peer="${CSS.escape(me)}"]`);
  let v = tile && tile.querySelector('video.self-view');
  if (!stream) {
    if (v) v.remove();
    return;
  }
  if (!tile) return;
  if (!v) {
    v = el('video', 'self-view');
    v.muted = true;
    v.autoplay = true;
    v.playsInline = true;
    tile.prepend(v);
  }
  v.srcObject = stream;
}

async function fillCameras() {
  const sel = $('camera-select');
  const current = sel.value;
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'videoinput');
  sel.replaceChildren(...devices.map((d, i) => {
    const o = el('option', '', d.label || `Camera ${i + 1}`);
    o.value = d.deviceId;
    return o;
  }));
  if (current) sel.value = current;
}

function renderVideoButtons() {
  const cam = $('call-camera');
  cam.textContent = senders.camera ? 'Camera off' : 'Camera on';
  cam.classList.toggle('on', !!senders.camera);
  const scr = $('call-screen');
  scr.textContent = senders.screen ? 'Stop sharing' : 'Share screen';
  scr.classList.toggle('on', !!senders.screen);
}

async function toggle(name, start) {
  setError('call-error', '');
  if (senders[name]) {
    stopTrack(name);
    return;
  }
  try {
    await start();
  } catch (e) {
    setError('call-error', `Cannot start the ${name}: ${e.message}`);
  }
  renderVideoButtons();
}

// ---------- receiving ----------

const remotes = new Map(); // `${peer}/${track}` -> Remote

class Remote {
  constructor(peer, track) {
    this.peer = peer;
    this.track = track;
    this.key = `${peer}/${track}`;
    this.pending = new Map(); // chunk timestamp -> seq
    this.lastFrame = 0;
    this.decoder = null;
    this.canvas = el('canvas', track === 'screen' ? 'stage-video' : 'tile-video');
    this.ctx2d = this.canvas.getContext('2d');
    if (DIAG) vdiag.recv[this.key] = vdiag.recv[this.key] || { frames: [], decoded: 0, errors: 0 };
  }

  newDecoder() {
    this.decoder = new VideoDecoder({
      output: (frame) => this.draw(frame),
      error: (e) => {
        vlog(`${this.key} decoder: ${e.message}`);
        if (DIAG) vdiag.recv[this.key].errors++;
      },
    });
  }

  decode(seq, key, data) {
    if (!this.decoder || this.decoder.state === 'closed') this.newDecoder();
    if (this.decoder.state === 'unconfigured') {
      if (!key) return;
      this.decoder.configure({ codec: 'vp8', hardwareAcceleration: 'no-preference', optimizeForLatency: true });
    }
    const timestamp = seq * 1000;
    this.pending.set(timestamp, seq);
    if (this.pending.size > 64) this.pending.delete(this.pending.keys().next().value);
    this.decoder.decode(new EncodedVideoChunk({ type: key ? 'key' : 'delta', timestamp, data }));
  }

  draw(frame) {
    this.place();
    if (this.canvas.width !== frame.displayWidth || this.canvas.height !== frame.displayHeight) {
      this.canvas.width = frame.displayWidth;
      this.canvas.height = frame.displayHeight;
    }
    this.ctx2d.drawImage(frame, 0, 0);
    const drawn = wallNow();
    this.lastFrame = drawn;
    this.pending.delete(frame.timestamp);
    if (DIAG) this.record(frame, drawn);
    else frame.close();
  }

  record(frame, drawn) {
    const r = vdiag.recv[this.key];
    r.decoded++;
    r.width = frame.displayWidth;
    r.height = frame.displayHeight;
    if (r.frames.length >= 20000) {
      frame.close();
      return;
    }
    const entry = [null, drawn];
    r.frames.push(entry);
    readNumber(frame).then((n) => { entry[0] = n; }).finally(() => frame.close());
  }

  // The canvas goes into the member's tile (camera) or onto the stage (screen).
  place() {
    if (this.track === 'screen') {
      const stage = $('stage');
      if (this.canvas.parentNode !== stage) {
        stage.replaceChildren(this.canvas, el('div', 'stage-name', `${nameOf(this.peer)} is sharing a screen`));
      }
      stage.hidden = false;
      return;
    }
    const tile = document.querySelector(`.tile[data-peer="${CSS.escape(this.peer)}"]`);
    if (tile && this.canvas.parentNode !== tile) tile.prepend(this.canvas);
  }

  close() {
    this.canvas.remove();
    if (this.decoder && this.decoder.state !== 'closed') this.decoder.close();
    if (this.track === 'screen' && !$('stage').querySelector('canvas')) $('stage').hidden = true;
  }
}

function nameOf(peer) {
  const m = ui.call && ui.call.members && Object.values(ui.call.members).find((x) => x.peer === peer);
  return m ? who(m) : shortId(peer);
}

// A member's frame from the node (binary message kind 4).
function onVideoMessage(buf) {
  const v = new DataView(buf);
  if (buf.byteLength < 34) return;
  const track = KIND_NAMES[v.getUint8(1)];
  const plen = v.getUint8(32);
  if (!track || buf.byteLength <= 33 + plen) return;
  const peer = new TextDecoder().decode(new Uint8Array(buf, 33, plen));
  const key = v.getUint8(2) === 1;
  const seq = v.getUint32(12, true);
  let r = remotes.get(`${peer}/${track}`);
  if (!r) {
    r = new Remote(peer, track);
    remotes.set(r.key, r);
  }
  try {
    r.decode(seq, key, new Uint8Array(buf, 33 + plen));
  } catch (e) {
    vlog(`${r.key} decode: ${e.message}`);
  }
}

function onKeyframeWanted(track) {
  const s = senders[track];
  if (!s) return;
  s.forceKey = true;
  vdiag.keyframesAsked[track]++;
}

// Tracks that went quiet, and members who left, lose their canvas.
function sweep() {
  const now = wallNow();
  const members = new Set(ui.call ? Object.values(ui.call.members).map((m) => m.peer) : []);
  for (const [k, r] of remotes) {
    if (!members.has(r.peer) || (r.lastFrame && now - r.lastFrame > STALE_MS)) {
      r.close();
      remotes.delete(k);
    }
  }
}

function stopAllVideo() {
  stopTrack('camera');
  stopTrack('screen');
  for (const r of remotes.values()) r.close();
  remotes.clear();
}

function wireVideo() {
  $('call-camera').addEventListener('click', () => toggle('camera', startCamera));
  $('call-screen').addEventListener('click', () => toggle('screen', startScreen));
  $('camera-select').addEventListener('change', () => {
    if (senders.camera) startCamera().catch((e) => setError('call-error', `Cannot switch the camera: ${e.message}`));
  });
  setInterval(sweep, 500);
}

window.confabVideo = {
  onFrame: onVideoMessage,
  onKeyframe: onKeyframeWanted,
  stopAll: stopAllVideo,
  selfView: () => senders.camera && selfView(senders.camera.stream),
  start: (name) => toggle(name, name === 'camera' ? startCamera : startScreen),
  senders,
};

wireVideo();
