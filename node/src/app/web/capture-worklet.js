// Microphone capture: collects 20 ms (960-sample) frames of the input at the context's
// rate (the page opens its AudioContext at 48 kHz) and posts each, as 16-bit PCM, with the
// context time of its first sample.
const FRAME = 960;

class ConfabCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frame = new Int16Array(FRAME);
    this.fill = 0;
    this.startTime = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const ch = input[0];
    for (let i = 0; i < ch.length; i++) {
      if (this.fill === 0) this.startTime = currentTime + i / sampleRate;
      let s = ch[i];
      if (input.length > 1) s = (s + input[1][i]) / 2;
      s = Math.max(-1, Math.min(1, s));
      this.frame[this.fill++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.fill === FRAME) {
        this.port.postMessage({ t: this.startTime, pcm: this.frame }, [this.frame.buffer]);
        this.frame = new Int16Array(FRAME);
        this.fill = 0;
      }
    }
    return true;
  }
}

registerProcessor('confab-capture', ConfabCapture);
