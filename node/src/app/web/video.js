// Video in the call page: the camera and a shared screen are encoded with WebCodecs (VP8,
// software, realtime; in video-worker.js) and handed to the node, which seals them end to
// end and sends them to the others; what the node hands back (decrypted, in order,
// decodable) is decoded (in the worker) and drawn into the member's tile, a shared screen on
// the large stage. This file is the main thread's part: buttons, devices, self-view,
// canvases, and moving messages between the WebSocket and the worker.
// Uses app.js's globals: ui, diag, DIAG, $, el, setError, who, shortId.
'use strict';

const TRACKS = {
  camera: { width: 640, height: 360, fps: 30, bitrate: 900_000 },
  screen: { width: 1280, height: 720, fps: 15, bitrate: 1_500_000 },
};
const KIND_NAMES = { 1: 'camera', 2: 'screen' };
const wallNow = () => performance.timeOrigin + performance.now();
// A remote track with no frame for this long is taken as stopped.
const STALE_MS = 2000;
// Video is drawn this much ahead of the audio captured with it at most (lip sync: people
// notice video behind audio sooner than ahead of it, and audio waits in more buffers).
const LIPSYNC_LEAD_MS = 40;

// Encoding and decoding run in a worker (video-worker.js), off this thread, which carries
// the audio: the worker gets the camera's frames and the members' messages, and draws on
// canvases handed to it.
const worker = new Worker('/video-worker.js');

// What tests read back (with `diag`): the worker's counters (five times a second), and
// `full()`, a promise of everything it noted: per frame sent, its number (read from the
// pixels) and capture time; per frame drawn, its number and when it was drawn.
const vdiag = {
  stats: { sent: {}, recv: {}, skipped: {}, configs: {} },
  errors: [],
  keyframesAsked: { camera: 0, screen: 0 },
  pending: new Map(),
  nextId: 1,
  full() {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      worker.postMessage({ type: 'diag', id });
    });
  },
};
diag.video = vdiag;

function vlog(what) {
  if (vdiag.errors.length < 100) vdiag.errors.push(`${Date.now()} ${what}`);
}

worker.onmessage = (e) => {
  const m = e.data;
  if (m.type === 'out') {
    if (ui.ws && ui.ws.readyState === WebSocket.OPEN) for (const p of m.parts) ui.ws.send(p);
  } else if (m.type === 'stats') {
    vdiag.stats = m.stats;
  } else if (m.type === 'diag') {
    const resolve = vdiag.pending.get(m.id);
    vdiag.pending.delete(m.id);
    if (resolve) resolve(m.data);
  } else if (m.type === 'log') {
    vlog(m.text);
  }
};

// ---------- sending ----------

class Sender {
  constructor(name) {
    this.name = name;
    this.stream = null;
  }

  async start(stream) {
    this.stream = stream;
    const track = stream.getVideoTracks()[0];
    track.addEventListener('ended', () => stopTrack(this.name));
    const readable = new MediaStreamTrackProcessor({ track }).readable;
    worker.postMessage({ type: 'send', name: this.name, spec: TRACKS[this.name], readable, diag: DIAG }, [readable]);
  }

  stop() {
    worker.postMessage({ type: 'stop', name: this.name });
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
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

// A member's track: its canvas here, drawn on by the worker.
class Remote {
  constructor(peer, track) {
    this.peer = peer;
    this.track = track;
    this.key = `${peer}/${track}`;
    this.canvas = el('canvas', track === 'screen' ? 'stage-video' : 'tile-video');
    const off = this.canvas.transferControlToOffscreen();
    worker.postMessage({ type: 'canvas', key: this.key, canvas: off, diag: DIAG }, [off]);
    this.born = wallNow();
  }

  lastFrame() {
    const s = vdiag.stats.recv[this.key];
    return (s && s.last) || this.born;
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
    worker.postMessage({ type: 'drop', key: this.key });
    this.canvas.remove();
    if (this.track === 'screen' && !$('stage').querySelector('canvas')) $('stage').hidden = true;
  }
}

function nameOf(peer) {
  const m = ui.call && ui.call.members && Object.values(ui.call.members).find((x) => x.peer === peer);
  return m ? who(m) : shortId(peer);
}

// A member's frame from the node (binary message kind 4): to the worker, untouched.
function onVideoMessage(buf) {
  const v = new DataView(buf);
  if (buf.byteLength < 34) return;
  const track = KIND_NAMES[v.getUint8(1)];
  const plen = v.getUint8(32);
  if (!track || buf.byteLength <= 33 + plen) return;
  const peer = new TextDecoder().decode(new Uint8Array(buf, 33, plen));
  let r = remotes.get(`${peer}/${track}`);
  if (!r) {
    r = new Remote(peer, track);
    remotes.set(r.key, r);
  }
  r.place();
  worker.postMessage({ type: 'frame', key: r.key, buf }, [buf]);
}

function onKeyframeWanted(track) {
  if (!senders[track]) return;
  worker.postMessage({ type: 'key', name: track });
  vdiag.keyframesAsked[track]++;
}

// Tracks that went quiet, and members who left, lose their canvas.
function sweep() {
  const now = wallNow();
  const members = new Set(ui.call ? Object.values(ui.call.members).map((m) => m.peer) : []);
  for (const [k, r] of remotes) {
    if (!members.has(r.peer) || now - r.lastFrame() > STALE_MS) {
      r.close();
      remotes.delete(k);
    }
  }
}

// How long after its capture a member's audio plays here, ms: the node's figure to its
// playout, the page's playout queue, the audio output; null while unknown.
function audioDelay(peer) {
  const m = ui.call && ui.call.members && ui.call.members[peer];
  const node = m && m.stats && m.stats.mouth_to_ear_p50_ms;
  if (typeof node !== 'number') return null;
  const player = diag.player[peer];
  const queued = player ? player.queued / 48 : 0;
  const ctx = ui.engine && ui.engine.ctx;
  const out = ctx ? ((ctx.outputLatency || 0) + (ctx.baseLatency || 0)) * 1000 : 0;
  return node + queued + out;
}

// Each member's video waits for its audio (see video-worker.js).
function syncToAudio() {
  for (const r of remotes.values()) {
    const audio = audioDelay(r.peer);
    const delayMs = audio === null ? 0 : Math.max(0, audio - LIPSYNC_LEAD_MS);
    worker.postMessage({ type: 'sync', key: r.key, delayMs });
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
  setInterval(syncToAudio, 200);
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
