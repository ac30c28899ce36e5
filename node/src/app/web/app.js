// The confab web app. It talks only to the local node that served it: JSON over /api/ for
// the home screen, one WebSocket for the call (commands, state, microphone PCM out, played
// PCM in, encoded video both ways: video.js). The node does Opus, the encryption and the
// mesh; the page captures, encodes video, plays and draws.
'use strict';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const DIAG = params.has('diag');
// The token now lives in a cookie; keep it out of the address bar, history and screenshots.
if (params.has('token')) history.replaceState(null, '', '/' + location.hash);

const ui = {
  server: null, // the node's state (account, rooms, history, relays, call)
  call: null, // the call view
  screen: 'home', // home | prejoin (local screens; the others follow the state)
  pendingTicket: null,
  ws: null,
  backoff: 500,
  wantMedia: false,
  engine: null,
  slots: new Map(), // slot -> peer
  peerSlot: new Map(), // peer -> slot
  volumes: new Map(), // peer -> gain
  levels: new Map(), // peer -> rms
  ptt: false,
  notice: '',
};

// What tests read back: frames per member, what was played (with `diag` only), marks.
const diag = {
  framesIn: {},
  played: {},
  player: {},
  captured: [],
  queued: [],
  // The median of what waited in the playout queue of `peer`, ms.
  queueMs(peer) {
    const q = this.queued.filter((x) => x[0] === peer).map((x) => x[1]).sort((a, b) => a - b);
    return q.length ? q[q.length >> 1] : null;
  },
  // Frame arrivals from the node: how long after the node played each one the page had it.
  arrival: [],
  micFrames: 0,
  micDropped: 0,
  marks: [],
  // Level of each ~50 ms block played from `peer`, with its wall-clock time.
  playedLevels(peer) {
    return (this.played[peer] || []).map((p) => ({
      wall: p.wall,
      rms: Math.sqrt(p.pcm.reduce((a, x) => a + x * x, 0) / p.pcm.length),
    }));
  },
  capturedPcm() {
    return this.encode(this.captured);
  },
  playedPcm(peer) {
    return this.encode(this.played[peer] || []);
  },
  encode(parts) {
    const n = parts.reduce((a, p) => a + p.pcm.length, 0);
    const out = new Int16Array(n);
    const marks = [];
    let o = 0;
    for (const p of parts) {
      marks.push([o, p.wall]);
      for (let i = 0; i < p.pcm.length; i++) out[o++] = Math.max(-1, Math.min(1, p.pcm[i])) * 32767;
    }
    let bin = '';
    const bytes = new Uint8Array(out.buffer);
    for (let i = 0; i < bytes.length; i += 8192) bin += String.fromCharCode(...bytes.subarray(i, i + 8192));
    return { start_ms: parts.length ? parts[0].wall : 0, marks, pcm_b64: btoa(bin) };
  },
};
window.confabDiag = diag;

// ---------- helpers ----------

function show(id, on) { $(id).hidden = !on; }

function setError(id, text) { $(id).textContent = text || ''; }

function shortId(p) { return p && p.length > 16 ? `${p.slice(0, 8)}…${p.slice(-6)}` : p || ''; }

function when(ms) { return new Date(ms).toLocaleString(); }

function duration(ms) {
  const s = Math.round(ms / 1000);
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function button(text, onClick, cls) {
  const b = el('button', cls, text);
  b.addEventListener('click', onClick);
  return b;
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    credentials: 'same-origin',
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  let data = {};
  try { data = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) throw new Error(data.error || `the node answered ${res.status}`);
  return data;
}

function inviteText(ticket) {
  return `Join my confab call: open your confab app, choose "Join a call" and paste this invite.\n${ticket}`;
}

async function copy(text, textarea) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (_) {
    textarea.value = text;
    textarea.select();
    return document.execCommand('copy');
  }
}

// ---------- the WebSocket ----------

function send(msg) {
  if (ui.ws && ui.ws.readyState === WebSocket.OPEN) {
    ui.ws.send(JSON.stringify(msg));
    return true;
  }
  return false;
}

function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.binaryType = 'arraybuffer';
  ui.ws = ws;
  ws.onopen = () => {
    ui.backoff = 500;
    show('overlay', false);
    if (ui.wantMedia) send({ type: 'media' });
  };
  ws.onmessage = (e) => {
    if (typeof e.data === 'string') onEvent(JSON.parse(e.data));
    else if (e.data.byteLength && new Uint8Array(e.data, 0, 1)[0] === 4) window.confabVideo.onFrame(e.data);
    else onAudio(e.data);
  };
  ws.onclose = () => {
    $('overlay-text').textContent = 'The connection to your node was lost. Reconnecting… (is `confab app` still running?)';
    show('overlay', true);
    setTimeout(connect, ui.backoff);
    ui.backoff = Math.min(ui.backoff * 2, 5000);
  };
}

function onEvent(m) {
  switch (m.type) {
    case 'state':
      ui.server = m;
      ui.call = m.call;
      break;
    case 'call':
      ui.call = m.call;
      diag.media = m.media;
      break;
    case 'ended':
      onEnded(m.call);
      break;
    case 'slot':
      ui.slots.set(m.slot, m.peer);
      ui.peerSlot.set(m.peer, m.slot);
      applyVolume(m.peer);
      break;
    case 'error':
      onServerError(m.message);
      return;
    case 'keyframe':
      window.confabVideo.onKeyframe(m.track);
      return;
    default:
      return;
  }
  render();
}

function onEnded(view) {
  ui.call = null;
  ui.wantMedia = false;
  window.confabVideo.stopAll();
  if (ui.engine) ui.engine.stop();
  ui.engine = null;
  ui.screen = 'home';
  ui.notice = view && view.error ? `The call ended: ${view.error}` : '';
}

function onServerError(message) {
  const target = ui.call ? 'call-error' : ui.screen === 'prejoin' ? 'prejoin-error' : 'home-error';
  setError(target, message);
}

function onAudio(buf) {
  const v = new DataView(buf);
  if (buf.byteLength < 16 || v.getUint8(0) !== 2) return;
  const slot = v.getUint8(1);
  const peer = ui.slots.get(slot) || `slot ${slot}`;
  diag.framesIn[peer] = (diag.framesIn[peer] || 0) + 1;
  if (DIAG && diag.arrival.length < 10000) diag.arrival.push(Date.now() - v.getFloat64(8, true));
  if (!ui.engine) return;
  const pcm = new Int16Array(buf, 16);
  const samples = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
  ui.engine.play(slot, samples);
}

// ---------- audio ----------

class Engine {
  constructor() {
    this.ctx = null;
    this.stream = null;
    this.source = null;
    this.analyser = null;
    this.capture = null;
    this.player = null;
    this.sending = false;
  }

  async open(opts) {
    if (!this.ctx) {
      this.ctx = new AudioContext({ sampleRate: 48000, latencyHint: 'interactive' });
      await this.ctx.audioWorklet.addModule('/capture-worklet.js');
      await this.ctx.audioWorklet.addModule('/player-worklet.js');
    }
    if (this.ctx.state === 'suspended') await this.ctx.resume();
    await this.openMic(opts);
    if (opts.speaker && this.ctx.setSinkId) {
      try { await this.ctx.setSinkId(opts.speaker); } catch (_) { /* keep the default */ }
    }
  }

  async openMic(opts) {
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    if (this.source) this.source.disconnect();
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: {
        deviceId: opts.mic ? { exact: opts.mic } : undefined,
        echoCancellation: opts.echo,
        noiseSuppression: opts.noise,
        autoGainControl: opts.gain,
        channelCount: 1,
      },
    });
    this.source = this.ctx.createMediaStreamSource(this.stream);
    this.analyser = this.ctx.createAnalyser();
    this.analyser.fftSize = 1024;
    this.source.connect(this.analyser);
    if (this.capture) this.source.connect(this.capture);
  }

  // Starts sending the microphone and playing the call.
  start() {
    this.capture = new AudioWorkletNode(this.ctx, 'confab-capture', { numberOfOutputs: 1 });
    const silent = this.ctx.createGain();
    silent.gain.value = 0;
    this.capture.connect(silent).connect(this.ctx.destination);
    this.source.connect(this.capture);
    this.capture.port.onmessage = (e) => this.sendMic(e.data);
    this.player = new AudioWorkletNode(this.ctx, 'confab-player', {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [2],
      processorOptions: { diag: DIAG },
    });
    this.player.connect(this.ctx.destination);
    this.player.port.onmessage = (e) => onLevels(e.data);
    this.sending = true;
  }

  // Context time `t` on the host's wall clock (ms since the Unix epoch).
  wall(t) {
    const ts = this.ctx.getOutputTimestamp();
    return performance.timeOrigin + ts.performanceTime + (t - ts.contextTime) * 1000;
  }

  sendMic({ t, pcm }) {
    if (!this.sending || !ui.ws || ui.ws.readyState !== WebSocket.OPEN) return;
    if (ui.ws.bufferedAmount > 65536) {
      diag.micDropped++;
      return;
    }
    const buf = new ArrayBuffer(16 + pcm.length * 2);
    const v = new DataView(buf);
    v.setUint8(0, 1);
    v.setFloat64(8, this.wall(t), true);
    new Int16Array(buf, 16).set(pcm);
    ui.ws.send(buf);
    diag.micFrames++;
    if (DIAG) diag.captured.push({ wall: this.wall(t), pcm: Float32Array.from(pcm, (x) => x / 32768) });
  }

  play(slot, samples) {
    if (this.player) this.player.port.postMessage({ type: 'audio', slot, samples }, [samples.buffer]);
  }

  gain(slot, g) {
    if (this.player) this.player.port.postMessage({ type: 'gain', slot, gain: g });
  }

  level() {
    if (!this.analyser) return 0;
    const a = new Float32Array(this.analyser.fftSize);
    this.analyser.getFloatTimeDomainData(a);
    return Math.sqrt(a.reduce((s, x) => s + x * x, 0) / a.length);
  }

  stop() {
    this.sending = false;
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    if (this.ctx) this.ctx.close();
  }
}

function onLevels(m) {
  for (const [slot, l] of Object.entries(m.levels)) {
    const peer = ui.slots.get(Number(slot));
    if (peer) ui.levels.set(peer, l.rms);
    if (peer) diag.player[peer] = { underruns: l.underruns, dropped: l.dropped, queued: l.queued, target: l.target, trimmed: l.trimmed };
    if (peer && DIAG && diag.queued.length < 20000) diag.queued.push([peer, l.queued / 48]);
  }
  if (DIAG && ui.engine) {
    const out = ui.engine.ctx.outputLatency || 0;
    for (const [slot, p] of Object.entries(m.played)) {
      const peer = ui.slots.get(Number(slot)) || `slot ${slot}`;
      (diag.played[peer] = diag.played[peer] || []).push({ wall: ui.engine.wall(p.t) + out * 1000, pcm: p.pcm });
    }
  }
  paintLevels();
}

function audioOptions() {
  return {
    mic: $('mic-select').value || undefined,
    speaker: $('speaker-select').value || undefined,
    echo: $('opt-echo').checked,
    noise: $('opt-noise').checked,
    gain: $('opt-gain').checked,
  };
}

async function fillDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [kind, select] of [['audioinput', 'mic-select'], ['audiooutput', 'speaker-select']]) {
    const s = $(select);
    const keep = s.value;
    s.replaceChildren();
    devices.filter((d) => d.kind === kind).forEach((d, i) => {
      const o = el('option', '', d.label || `${kind === 'audioinput' ? 'Microphone' : 'Speaker'} ${i + 1}`);
      o.value = d.deviceId;
      s.append(o);
    });
    if (keep) s.value = keep;
  }
}

let meterTimer = null;
function startMeter() {
  clearInterval(meterTimer);
  meterTimer = setInterval(() => {
    if (!ui.engine) return;
    const l = ui.engine.level();
    $('mic-level').style.width = `${Math.min(100, Math.round(Math.sqrt(l) * 160))}%`;
    const self = document.querySelector('.tile.self');
    if (self) self.classList.toggle('speaking', l > 0.02 && !(ui.call && ui.call.muted));
  }, 80);
}

async function speakerTest() {
  const ctx = ui.engine && ui.engine.ctx ? ui.engine.ctx : new AudioContext();
  const osc = ctx.createOscillator();
  const g = ctx.createGain();
  g.gain.value = 0.2;
  osc.frequency.value = 660;
  osc.connect(g).connect(ctx.destination);
  osc.start();
  osc.stop(ctx.currentTime + 0.5);
}

// ---------- screens ----------

function render() {
  const s = ui.server;
  for (const id of ['screen-first-run', 'screen-home', 'screen-prejoin', 'screen-call']) show(id, false);
  if (!s) return;
  if (!s.account) {
    show('screen-first-run', true);
  } else if (ui.call) {
    show('screen-call', true);
    renderCall();
  } else if (ui.screen === 'prejoin') {
    show('screen-prejoin', true);
  } else {
    show('screen-home', true);
    renderHome();
  }
}

function renderHome() {
  const s = ui.server;
  $('home-name').textContent = s.account.name || '(no name)';
  $('home-peer').textContent = shortId(s.account.peer_id);
  $('home-peer').title = s.account.peer_id;
  setError('home-error', ui.notice);
  const rooms = $('home-rooms');
  rooms.replaceChildren();
  for (const r of [...s.rooms].sort((a, b) => b.created_ms - a.created_ms)) {
    const li = el('li');
    li.append(el('span', '', `${r.room_id.slice(0, 8)} · ${when(r.created_ms)}`));
    const row = el('span', 'row');
    row.append(button('Copy invite', () => copy(inviteText(r.ticket), $('home-invite'))));
    row.append(button('Start', () => goPrejoin(r.ticket), 'primary'));
    li.append(row);
    rooms.append(li);
  }
  if (!s.rooms.length) rooms.append(el('li', 'muted', 'No rooms yet.'));
  const hist = $('home-history').tBodies[0];
  hist.replaceChildren();
  for (const h of [...s.history].reverse().slice(0, 50)) {
    const tr = el('tr');
    tr.append(el('td', '', when(h.started_ms)), el('td', '', duration(h.duration_ms)),
      el('td', '', `${h.peers.length} ${h.peers.length === 1 ? 'person' : 'people'}`),
      el('td', 'muted', h.room_id.slice(0, 8)));
    hist.append(tr);
  }
  if (document.activeElement !== $('retention')) $('retention').value = s.retention_days;
  const relays = $('home-relays');
  relays.replaceChildren();
  for (const r of s.relays) {
    const li = el('li');
    li.append(el('span', '', r), button('Remove', () => act(() => api('DELETE', '/api/relays', { addr: r }), 'home-error')));
    relays.append(li);
  }
  if (!s.relays.length) relays.append(el('li', 'muted', 'No relays: calls need a direct path.'));
}

async function act(fn, errId) {
  setError(errId, '');
  try {
    return await fn();
  } catch (e) {
    setError(errId, e.message);
    return null;
  }
}

async function goPrejoin(ticket) {
  ui.pendingTicket = ticket;
  ui.screen = 'prejoin';
  ui.notice = '';
  render();
  setError('prejoin-error', '');
  try {
    if (!ui.engine) ui.engine = new Engine();
    await ui.engine.open(audioOptions());
    await fillDevices();
    startMeter();
  } catch (e) {
    setError('prejoin-error', `Cannot open the microphone: ${e.message}. Allow it in the browser and try again.`);
  }
}

function joinCall() {
  if (!ui.engine || !ui.engine.source) {
    setError('prejoin-error', 'The microphone is not open yet.');
    return;
  }
  if (!ui.engine.sending) ui.engine.start();
  ui.wantMedia = true;
  send({ type: 'media' });
  if (!send({ type: 'join', ticket: ui.pendingTicket })) {
    setError('prejoin-error', 'Not connected to your node.');
    return;
  }
  if ($('opt-muted').checked) send({ type: 'mute', on: true });
  diag.marks.push({ what: 'join', at: Date.now() });
}

async function resumeHere() {
  try {
    if (!ui.engine) ui.engine = new Engine();
    await ui.engine.open(audioOptions());
    if (!ui.engine.sending) ui.engine.start();
    ui.wantMedia = true;
    send({ type: 'media' });
    startMeter();
    render();
  } catch (e) {
    setError('call-error', `Cannot open the microphone: ${e.message}`);
  }
}

// ---------- the call ----------

function who(m) { return m.name || shortId(m.peer); }

function renderCall() {
  const c = ui.call;
  const n = Object.keys(c.members).length;
  const status = c.status === 'joining' ? 'Connecting to the room…'
    : n === 0 ? 'Waiting for others to join…' : `${n + 1} people`;
  $('call-status').textContent = status;
  const mute = $('call-mute');
  mute.textContent = c.muted ? 'Unmute' : 'Mute';
  mute.classList.toggle('on', c.muted);
  const rec = $('call-record');
  rec.textContent = c.recording ? 'Stop recording' : 'Record';
  rec.classList.toggle('on', c.recording);
  show('call-resume', !ui.engine || !ui.engine.sending);
  renderBanner(c);
  renderTiles(c);
  renderChat(c);
}

function renderBanner(c) {
  const lines = [];
  if (c.recording) lines.push(`● You are recording this call${c.recording_path ? ` to ${c.recording_path}` : ''}. Everyone has been told.`);
  for (const m of Object.values(c.members)) if (m.recording) lines.push(`⚠ ${who(m)} is recording this call.`);
  const recent = c.departed.filter((d) => Date.now() - d.at_ms < 15000);
  for (const d of recent) lines.push(`${d.name || shortId(d.peer)} ${d.why}${d.why === 'lost connection' ? ' — they may come back' : ''}.`);
  const b = $('call-banner');
  b.textContent = lines.join('  ');
  b.hidden = lines.length === 0;
}

function tileFor(peer, self) {
  let t = document.querySelector(`.tile[data-peer="${CSS.escape(peer)}"]`);
  if (t) return t;
  t = el('div', self ? 'tile self' : 'tile');
  t.dataset.peer = peer;
  t.append(el('div', 'name'), el('div', 'badges'), el('div', 'quality'));
  if (!self) {
    const vol = el('input');
    vol.type = 'range';
    vol.min = '0';
    vol.max = '200';
    vol.value = String(Math.round((ui.volumes.get(peer) ?? 1) * 100));
    vol.title = 'Volume';
    vol.addEventListener('input', () => {
      ui.volumes.set(peer, Number(vol.value) / 100);
      applyVolume(peer);
    });
    t.append(vol);
  }
  $('tiles').append(t);
  return t;
}

function badges(t, list) {
  const b = t.querySelector('.badges');
  b.replaceChildren(...list.map(([cls, text]) => el('span', `badge ${cls}`, text)));
}

function quality(m) {
  const s = m.stats;
  if (!s) return ['waiting for audio…', ''];
  // The node's figure runs from the sender's capture tick to the frame handed to this
  // page; what waits in this page's playout queue and the output's own latency come on top.
  const here = playoutMs(m.peer);
  const ms = (v) => (v == null ? '–' : `${Math.round(v + here)} ms`);
  const lat = ms(s.mouth_to_ear_p50_ms);
  const total = s.frames_received + s.frames_lost;
  const loss = total ? (100 * s.frames_lost) / total : 0;
  const line = `${lat} · ${loss.toFixed(1)}% loss · MOS ${s.mos.toFixed(1)}`;
  const detail = `mouth-to-ear p50 ${lat}, p95 ${ms(s.mouth_to_ear_p95_ms)}: `
    + `node to node ${Math.round(s.mouth_to_ear_p50_ms ?? 0)} ms (framing and codec included) `
    + `+ playout here ${Math.round(here)} ms; the sender's capture buffering is not included\n`
    + `jitter ${s.jitter_ms.toFixed(1)} ms\nframes ${s.frames_received} received, ${s.frames_lost} lost, `
    + `${s.frames_late} late, ${s.frames_concealed} concealed\nlevel ${s.level_dbfs.toFixed(0)} dBFS`;
  return [line, detail];
}

// What this page adds after the node handed a member's audio over: the playout queue
// (as last reported) and the output's latency, ms.
function playoutMs(peer) {
  const p = diag.player[peer];
  const queued = p ? p.queued / 48 : 0;
  const ctx = ui.engine && ui.engine.ctx;
  const out = ctx ? ((ctx.baseLatency || 0) + (ctx.outputLatency || 0)) * 1000 : 0;
  return queued + out;
}

function renderTiles(c) {
  const me = ui.server.account;
  const self = tileFor(me.peer_id, true);
  self.querySelector('.name').textContent = `${me.name || 'You'} (you)`;
  badges(self, c.muted ? [['', 'muted']] : []);
  self.querySelector('.quality').textContent = `${c.frames_sent} frames sent`;
  const keep = new Set([me.peer_id]);
  for (const m of Object.values(c.members)) {
    keep.add(m.peer);
    const t = tileFor(m.peer, false);
    t.querySelector('.name').textContent = who(m);
    const list = [[m.path, m.path]];
    if (m.muted) list.push(['', 'muted']);
    if (m.recording) list.push(['rec', '● recording']);
    badges(t, list);
    const [line, detail] = quality(m);
    const q = t.querySelector('.quality');
    q.textContent = line;
    q.title = detail;
  }
  for (const t of [...document.querySelectorAll('.tile')]) if (!keep.has(t.dataset.peer)) t.remove();
}

function paintLevels() {
  if (!ui.call) return;
  for (const m of Object.values(ui.call.members)) {
    const t = document.querySelector(`.tile[data-peer="${CSS.escape(m.peer)}"]`);
    if (t) t.classList.toggle('speaking', (ui.levels.get(m.peer) || 0) > 0.01 && !m.muted);
  }
}

function renderChat(c) {
  const list = $('chat-list');
  if (list.childElementCount === c.chat.length && list.dataset.last === String(c.chat.at(-1)?.at_ms)) return;
  list.replaceChildren();
  for (const l of c.chat) {
    const li = el('li', l.mine ? 'mine' : '');
    li.append(el('span', 'who', l.mine ? 'You' : l.name || shortId(l.peer)), el('span', '', l.text));
    li.title = when(l.at_ms);
    list.append(li);
  }
  list.dataset.last = String(c.chat.at(-1)?.at_ms);
  list.scrollTop = list.scrollHeight;
}

function applyVolume(peer) {
  const slot = ui.peerSlot.get(peer);
  if (slot !== undefined && ui.engine) ui.engine.gain(slot, ui.volumes.get(peer) ?? 1);
}

function setMuted(on) {
  if (!ui.call) return;
  diag.marks.push({ what: on ? 'mute' : 'unmute', at: Date.now() });
  send({ type: 'mute', on });
}

function saveChat() {
  const c = ui.call;
  if (!c) return;
  const text = c.chat.map((l) => `[${when(l.at_ms)}] ${l.mine ? 'You' : l.name || l.peer}: ${l.text}`).join('\n');
  const a = el('a');
  a.href = URL.createObjectURL(new Blob([text], { type: 'text/plain' }));
  a.download = `confab-chat-${c.room_id.slice(0, 8)}.txt`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

async function exportAccount() {
  const res = await fetch('/api/account/export', { credentials: 'same-origin' });
  if (!res.ok) throw new Error(`export failed (${res.status})`);
  const a = el('a');
  a.href = URL.createObjectURL(await res.blob());
  a.download = 'confab-account.json';
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

// ---------- wiring ----------

function wireHome() {
  $('first-create').addEventListener('click', () => act(() => api('POST', '/api/account', { name: $('first-name').value }), 'first-error'));
  $('home-rename').addEventListener('click', () => {
    const name = prompt('Your name', ui.server.account.name || '');
    if (name) act(() => api('PUT', '/api/account/name', { name }), 'home-error');
  });
  $('home-create').addEventListener('click', () => act(async () => {
    const r = await api('POST', '/api/rooms');
    $('home-invite').value = inviteText(r.ticket);
    $('home-invite').dataset.ticket = r.ticket;
    show('home-created', true);
  }, 'home-error'));
  $('home-copy').addEventListener('click', () => copy($('home-invite').value, $('home-invite')));
  $('home-start').addEventListener('click', () => goPrejoin($('home-invite').dataset.ticket));
  $('join-go').addEventListener('click', () => {
    const text = $('join-ticket').value;
    if (!/confab1[a-z0-9]+/.test(text)) {
      setError('home-error', 'That does not look like an invite: it should contain a code starting with confab1.');
      return;
    }
    goPrejoin(text);
  });
  $('retention-save').addEventListener('click', () => act(() => api('PUT', '/api/settings/retention', { days: Number($('retention').value) }), 'home-error'));
  $('history-clear').addEventListener('click', () => act(() => api('DELETE', '/api/history'), 'home-error'));
  $('relay-add').addEventListener('click', () => act(async () => {
    await api('POST', '/api/relays', { addr: $('relay-addr').value });
    $('relay-addr').value = '';
  }, 'home-error'));
  $('account-export').addEventListener('click', () => act(exportAccount, 'home-error'));
  $('account-delete').addEventListener('click', () => act(() => api('POST', '/api/account/delete', { confirm: $('delete-confirm').value.trim() }), 'home-error'));
}

function wirePrejoin() {
  $('prejoin-back').addEventListener('click', () => {
    ui.screen = 'home';
    if (ui.engine) ui.engine.stop();
    ui.engine = null;
    render();
  });
  $('prejoin-join').addEventListener('click', joinCall);
  $('speaker-test').addEventListener('click', speakerTest);
  for (const id of ['mic-select', 'opt-echo', 'opt-noise', 'opt-gain']) {
    $(id).addEventListener('change', () => act(() => ui.engine.openMic(audioOptions()), 'prejoin-error'));
  }
  $('speaker-select').addEventListener('change', () => {
    if (ui.engine && ui.engine.ctx && ui.engine.ctx.setSinkId) ui.engine.ctx.setSinkId($('speaker-select').value).catch(() => {});
  });
}

function wireCall() {
  $('call-mute').addEventListener('click', () => setMuted(!ui.call.muted));
  $('call-leave').addEventListener('click', () => send({ type: 'leave' }));
  $('call-record').addEventListener('click', () => send({ type: 'record', on: !ui.call.recording }));
  $('call-invite').addEventListener('click', async () => {
    const ok = await copy(inviteText(ui.call.ticket), $('call-invite-text'));
    $('call-invite').textContent = ok ? 'Invite copied' : 'Copy failed';
    setTimeout(() => { $('call-invite').textContent = 'Copy invite'; }, 2000);
  });
  $('call-resume-btn').addEventListener('click', resumeHere);
  $('chat-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('chat-input').value.trim();
    if (text && send({ type: 'chat', text })) $('chat-input').value = '';
  });
  $('chat-save').addEventListener('click', saveChat);
  const typing = () => ['INPUT', 'TEXTAREA', 'SELECT'].includes(document.activeElement.tagName);
  document.addEventListener('keydown', (e) => {
    if (!ui.call || typing() || e.repeat) return;
    if (e.key === 'm' || e.key === 'M') setMuted(!ui.call.muted);
    if (e.code === 'Space' && ui.call.muted) {
      e.preventDefault();
      ui.ptt = true;
      setMuted(false);
    }
  });
  document.addEventListener('keyup', (e) => {
    if (e.code === 'Space' && ui.ptt) {
      ui.ptt = false;
      setMuted(true);
    }
  });
}

function start() {
  wireHome();
  wirePrejoin();
  wireCall();
  const m = /invite=(confab1[a-z0-9]+)/.exec(location.hash);
  if (m) $('join-ticket').value = m[1];
  show('overlay', true);
  connect();
  setInterval(() => { if (ui.call) renderBanner(ui.call); }, 2000);
}

start();
