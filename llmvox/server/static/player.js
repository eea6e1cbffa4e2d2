// Gap-free playback of streamed speech with WebAudio.
//
// Each piece of audio becomes an AudioBuffer scheduled to start exactly where the previous one ends
// (AudioBufferSourceNode.start(nextTime)), so pieces play back to back whatever their sizes. The
// context runs at the voice's rate (24 kHz) when the browser allows, so no piece is resampled on its
// own. When a piece arrives after the previous one finished (the network or the server fell behind)
// playback restarts a little ahead of "now" and the safety lead doubles, like a jitter buffer.

const FIRST_LEAD = 0.06; // s between "now" and the first piece of a turn
const MAX_LEAD = 0.5;
const MIN_PIECE = 480; // samples: smaller pieces wait to be joined with the next (except at the end)

export class StreamPlayer {
  constructor(sampleRate, stats) {
    this.sampleRate = sampleRate;
    this.stats = stats; // window.__llmvoxStats: counts every buffer scheduled, for tests and the curious
    try {
      this.ctx = new AudioContext({ sampleRate, latencyHint: 'interactive' });
    } catch (_) {
      this.ctx = new AudioContext({ latencyHint: 'interactive' }); // buffers at 24 kHz still play, resampled
    }
    this.gain = this.ctx.createGain();
    this.analyser = this.ctx.createAnalyser();
    this.analyser.fftSize = 1024;
    this.gain.connect(this.analyser);
    this.analyser.connect(this.ctx.destination);
    this.sources = new Set();
    this.pending = [];
    this.pendingLength = 0;
    this.nextTime = 0;
    this.lead = FIRST_LEAD;
    this.turn = null;
    this.onidle = null;
  }

  async resume() {
    if (this.ctx.state !== 'running') {
      try { await this.ctx.resume(); } catch (_) { /* no user gesture yet: the next one resumes it */ }
    }
  }

  /** Start a new answer: `turnStats` collects this turn's buffers, seconds, gaps and stalled seconds. */
  begin(turnStats) {
    this.stop();
    this.turn = turnStats;
    this.nextTime = 0;
    this.lead = FIRST_LEAD;
    this.finished = false;
  }

  /** Queue samples of the current answer (Float32Array at this.sampleRate). */
  push(samples) {
    if (!samples.length) return;
    this.pending.push(samples);
    this.pendingLength += samples.length;
    if (this.pendingLength >= MIN_PIECE) this._flush();
  }

  /** The answer's audio is complete: play what is still queued; `onidle` fires when all has played. */
  end() {
    this._flush();
    this.finished = true;
    if (!this.sources.size) this._idle();
  }

  _flush() {
    if (!this.pendingLength) return;
    let samples = this.pending[0];
    if (this.pending.length > 1) {
      samples = new Float32Array(this.pendingLength);
      let offset = 0;
      for (const p of this.pending) { samples.set(p, offset); offset += p.length; }
    }
    this.pending = [];
    this.pendingLength = 0;
    this._schedule(samples);
  }

  _schedule(samples) {
    const buffer = this.ctx.createBuffer(1, samples.length, this.sampleRate);
    buffer.copyToChannel(samples, 0);
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.gain);
    const now = this.ctx.currentTime;
    if (this.nextTime < now + 0.005) {
      if (this.turn && this.turn.buffers > 0) { // the stream fell behind playback: an audible gap
        this.turn.gaps += 1;
        this.stats.gaps += 1;
        this.lead = Math.min(MAX_LEAD, this.lead * 2);
        this.turn.stallSeconds = (this.turn.stallSeconds || 0) + now + this.lead - this.nextTime; // silence heard
      }
      this.nextTime = now + this.lead;
    }
    const when = this.nextTime;
    source.start(when);
    this.nextTime += buffer.duration;
    this.sources.add(source);
    source.onended = () => {
      this.sources.delete(source);
      if (!this.sources.size && this.finished) this._idle();
    };
    this.stats.buffers += 1;
    this.stats.seconds += buffer.duration;
    if (this.turn) {
      this.turn.buffers += 1;
      this.turn.seconds += buffer.duration;
      if (this.turn.schedule && this.turn.schedule.length < 5000) this.turn.schedule.push([when, buffer.duration]);
    }
  }

  _idle() {
    const callback = this.onidle;
    if (callback) callback();
  }

  /** Silence now: every scheduled buffer is stopped and forgotten. */
  stop() {
    for (const source of this.sources) {
      source.onended = null;
      try { source.stop(); } catch (_) { /* not started yet */ }
    }
    this.sources.clear();
    this.pending = [];
    this.pendingLength = 0;
    this.nextTime = 0;
    this.finished = true;
  }

  get playing() {
    return this.sources.size > 0 && this.nextTime > this.ctx.currentTime;
  }

  /** Seconds of scheduled audio not yet played. */
  get queuedSeconds() {
    return Math.max(0, this.nextTime - this.ctx.currentTime);
  }

  /** Current output: RMS level (0..1) and the waveform into `into` (a Float32Array of fftSize). */
  level(into) {
    this.analyser.getFloatTimeDomainData(into);
    let sum = 0;
    for (let i = 0; i < into.length; i++) sum += into[i] * into[i];
    return Math.sqrt(sum / into.length);
  }
}
