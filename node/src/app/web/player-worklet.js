// Playout of what the node plays, one queue per member (slot): the node's jitter buffer
// has already paced the frames; this only absorbs the jitter of the hand-over to the page
// (the WebSocket, the page's main thread). A queue starts once `target` samples wait and
// restarts after running dry; every underrun raises its target by 10 ms (up to 80 ms),
// and the target falls back by 1 ms a second while playout is smooth. Audio beyond MAX
// waiting is dropped, oldest first. Each slot has its own gain (the member's volume). Every
// ~50 ms the levels are posted (the speaking indicators); with `diag`, what was played too.
const MIN_TARGET = 960; // 20 ms at 48 kHz
const MAX_TARGET = 3840; // 80 ms
const STEP = 480; // 10 ms
const MAX = 7200; // 150 ms
const TRIM_ABOVE = 1920; // 40 ms over the target: the page's clock runs slow; catch up
const TRIM = 128; // by skipping this much audio
const TRIM_EVERY = 4800; // at most every 100 ms (a speed-up of under 3 %)
const REPORT = 2400; // 50 ms

class Slot {
  constructor() {
    this.chunks = [];
    this.offset = 0;
    this.queued = 0;
    this.playing = false;
    this.target = MIN_TARGET + STEP;
    this.smooth = 0;
    this.sinceTrim = 0;
    this.trimmed = 0;
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
  // Skips a little audio when more waits than the target allows, so latency cannot creep.
  trim() {
    this.sinceTrim += 128;
    if (!this.playing || this.queued < this.target + TRIM_ABOVE || this.sinceTrim < TRIM_EVERY) return;
    this.sinceTrim = 0;
    let n = TRIM;
    while (n > 0 && this.chunks.length > 1) {
      const c = this.chunks[0];
      const k = Math.min(n, c.length - this.offset);
      this.offset += k;
      this.queued -= k;
      this.trimmed += k;
      n -= k;
      if (this.offset === c.length) {
        this.chunks.shift();
        this.offset = 0;
      }
    }
  }
  next() {
    if (!this.playing) {
      if (this.queued < this.target) return 0;
      this.playing = true;
    }
    if (this.queued === 0) {
      this.playing = false;
      this.underruns++;
      this.target = Math.min(MAX_TARGET, this.target + STEP);
      this.smooth = 0;
      return 0;
    }
    if (++this.smooth >= sampleRate) {
      this.smooth = 0;
      this.target = Math.max(MIN_TARGET, this.target - 48);
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
      s.trim();
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
        target: s.target,
        trimmed: s.trimmed,
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
