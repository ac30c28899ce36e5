// Playout of what the node plays, one queue per member (slot): the node's jitter buffer
// has already paced the frames; this only absorbs the hand-over's own jitter. A queue
// starts once TARGET samples wait, drops its oldest audio beyond MAX, and restarts after
// running dry. Each slot has its own gain (the member's volume). Every ~50 ms the levels
// are posted (the speaking indicators); with `diag`, what was played, per slot, too.
const TARGET = 1440; // 30 ms at 48 kHz
const MAX = 7200; // 150 ms
const REPORT = 2400; // 50 ms

class Slot {
  constructor() {
    this.chunks = [];
    this.offset = 0;
    this.queued = 0;
    this.playing = false;
    this.gain = 1;
    this.energy = 0;
    this.underruns = 0;
    this.dropped = 0;
  }
  push(samples) {
    this.chunks.push(samples);
    this.queued += samples.length;
    while (this.queued > MAX && this.chunks.length > 1) {
      const c = this.chunks.shift();
      this.queued -= c.length - this.offset;
      this.dropped += c.length - this.offset;
      this.offset = 0;
    }
  }
  next() {
    if (!this.playing) {
      if (this.queued < TARGET) return 0;
      this.playing = true;
    }
    if (this.queued === 0) {
      this.playing = false;
      this.underruns++;
      return 0;
    }
    const c = this.chunks[0];
    const s = c[this.offset++];
    this.queued--;
    if (this.offset === c.length) {
      this.chunks.shift();
      this.offset = 0;
    }
    return s;
  }
}

class ConfabPlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.slots = new Map();
    this.diag = !!(options.processorOptions && options.processorOptions.diag);
    this.sinceReport = 0;
    this.diagBufs = new Map();
    this.port.onmessage = (e) => this.onMessage(e.data);
  }
  slot(n) {
    let s = this.slots.get(n);
    if (!s) {
      s = new Slot();
      this.slots.set(n, s);
    }
    return s;
  }
  onMessage(m) {
    if (m.type === 'audio') this.slot(m.slot).push(m.samples);
    else if (m.type === 'gain') this.slot(m.slot).gain = m.gain;
    else if (m.type === 'forget') this.slots.delete(m.slot);
  }
  process(_inputs, outputs) {
    const out = outputs[0][0];
    const n = out.length;
    out.fill(0);
    for (const [k, s] of this.slots) {
      let d = null;
      if (this.diag) {
        d = this.diagBufs.get(k);
        if (!d) {
          d = { t: currentTime, buf: [] };
          this.diagBufs.set(k, d);
        }
        if (d.buf.length === 0) d.t = currentTime;
      }
      for (let i = 0; i < n; i++) {
        const v = s.next();
        s.energy += v * v;
        out[i] += v * s.gain;
        if (d) d.buf.push(v);
      }
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.sinceReport += n;
    if (this.sinceReport >= REPORT) this.report();
    return true;
  }
  report() {
    const levels = {};
    for (const [k, s] of this.slots) {
      levels[k] = {
        rms: Math.sqrt(s.energy / this.sinceReport),
        queued: s.queued,
        underruns: s.underruns,
        dropped: s.dropped,
      };
      s.energy = 0;
    }
    const played = {};
    if (this.diag) {
      for (const [k, d] of this.diagBufs) {
        if (d.buf.length) played[k] = { t: d.t, pcm: Float32Array.from(d.buf) };
        d.buf = [];
      }
    }
    this.port.postMessage({ type: 'levels', t: currentTime, levels, played });
    this.sinceReport = 0;
  }
}

registerProcessor('confab-player', ConfabPlayer);
