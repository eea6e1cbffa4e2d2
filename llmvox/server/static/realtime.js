// Hands-free voice chat over `WS /v1/realtime` (the server's OpenAI Realtime protocol, docs/realtime.md).
//
// The microphone's 20 ms frames are resampled to 16 kHz, sent as base64 pcm16 `input_audio_buffer.append`
// events, and the server's VAD decides the turns. The answer's base64 pcm16 24 kHz deltas go to the page's
// StreamPlayer as they arrive. Speaking over an answer (`input_audio_buffer.speech_started`) silences it
// at once and tells the server how much was really played (`conversation.item.truncate`), as OpenAI's
// clients do, so the next turn's history holds only what the user heard. Browsers cannot give a
// WebSocket headers: the API key goes in `?api_key=`, which the server's guard accepts for sockets.
//
// `window.__llmvoxStats.live` records the session for tests and the curious: events seen, audio sent,
// and one record per answer (buffers scheduled, ms played, truncation, latency).

import { apiUrl } from './api.js';
import { ASR_RATE } from './mic.js';
import { bytesToBase64 } from './wav.js';

const OUTPUT_RATE = 24000;
const PHASES = 256; // fractional positions of the resampler's filter table
const HALF_TAPS = 16;
const QUIET_ERRORS = new Set(['response_cancel_not_active']); // a race with the server's own cancel

const $ = (id) => document.getElementById(id);

/** Band-limited streaming resampler (windowed sinc, Hann window); keeps its state across frames. */
export class StreamResampler {
  constructor(from, to) {
    this.step = from / to;
    this.same = from === to;
    const cutoff = Math.min(1, to / from) * 0.92;
    this.table = [];
    for (let p = 0; p < PHASES; p++) {
      const frac = p / PHASES;
      const taps = new Float32Array(2 * HALF_TAPS);
      let sum = 0;
      for (let k = -HALF_TAPS + 1; k <= HALF_TAPS; k++) {
        const x = k - frac;
        const sinc = x === 0 ? 1 : Math.sin(Math.PI * cutoff * x) / (Math.PI * cutoff * x);
        const w = 0.5 + 0.5 * Math.cos((Math.PI * x) / (HALF_TAPS + 1));
        taps[k + HALF_TAPS - 1] = sinc * w;
        sum += sinc * w;
      }
      for (let i = 0; i < taps.length; i++) taps[i] /= sum; // unity gain at DC
      this.table.push(taps);
    }
    this.buf = new Float32Array(HALF_TAPS); // leading zeros centre the first output sample
    this.pos = HALF_TAPS;
  }

  push(input) {
    if (this.same) return input;
    const data = new Float32Array(this.buf.length + input.length);
    data.set(this.buf, 0);
    data.set(input, this.buf.length);
    const out = [];
    while (Math.floor(this.pos) + HALF_TAPS < data.length) {
      const centre = Math.floor(this.pos);
      const taps = this.table[Math.min(PHASES - 1, Math.round((this.pos - centre) * PHASES))];
      let acc = 0;
      for (let i = 0, j = centre - HALF_TAPS + 1; i < taps.length; i++, j++) acc += data[j] * taps[i];
      out.push(acc);
      this.pos += this.step;
    }
    const keep = Math.max(0, Math.floor(this.pos) - HALF_TAPS + 1);
    this.buf = data.slice(keep);
    this.pos -= keep;
    return Float32Array.from(out);
  }
}

/** Float samples in [-1, 1] -> base64 of little-endian pcm16. */
export function pcm16Base64(samples) {
  const view = new DataView(new ArrayBuffer(samples.length * 2));
  for (let i = 0; i < samples.length; i++) {
    view.setInt16(i * 2, Math.round(Math.max(-1, Math.min(1, samples[i])) * 32767), true);
  }
  return bytesToBase64(new Uint8Array(view.buffer));
}

/** Base64 pcm16 -> Float32Array. */
export function pcm16Floats(b64) {
  const binary = atob(b64);
  const out = new Float32Array(binary.length >> 1);
  for (let i = 0; i < out.length; i++) {
    const v = binary.charCodeAt(2 * i) | (binary.charCodeAt(2 * i + 1) << 8);
    out[i] = (v >= 0x8000 ? v - 0x10000 : v) / 32768;
  }
  return out;
}

/** Seconds of a turn's scheduled buffers ([start, duration] in the AudioContext clock) played by `now`. */
export function playedSeconds(schedule, now) {
  let played = 0;
  for (const [start, duration] of schedule) played += Math.max(0, Math.min(duration, now - start));
  return played;
}

function realtimeUrl(apiKey) {
  const url = new URL(apiUrl('v1/realtime'));
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  url.searchParams.set('model', 'llmvox');
  if (apiKey) url.searchParams.set('api_key', apiKey);
  return url.toString();
}

function ms(x) {
  return x === null || x === undefined || Number.isNaN(x) ? '–' : `${(x / 1000).toFixed(2)} s`;
}

/**
 * One live conversation. `hooks` are the page's own helpers (app.js): {mic, player(), stats, apiKey(),
 * addEntry(question), status(text, state), showError(message), setBusy(busy)}.
 */
export class LiveConversation {
  constructor(hooks) {
    this.h = hooks;
    this.ws = null;
    this.live = { state: 'off', events: {}, sentMs: 0, frames: 0, truncations: [], errors: [], turns: [] };
    hooks.stats.live = this.live;
    this.resampler = null;
    this.reset();
    for (const id of ['pause', 'barge-voice']) $(id).addEventListener('change', () => this.ws && this.sessionUpdate());
  }

  reset() {
    this.entry = null; // the log entry of the user's turn in progress
    this.entries = new Map(); // user item id -> log entry
    this.asked = null; // the entry of the latest recognised question: the next response answers it
    this.answer = null; // {rec, entry, responseId, itemId, done}
    this.speechEndAt = null;
    this.awaiting = false; // between the end of a question and its answer's end
  }

  get active() {
    return this.ws !== null;
  }

  /** The live conversation serves the Voice tab when the server can hear (it has speech recognition). */
  usable(info, mode) {
    return mode === 'voice' && Boolean(info && info.asr && info.modes.voice.available) && $('live-voice').checked;
  }

  /** The hands-free switch: on opens the microphone and the socket, off closes the socket. */
  async toggle(on, openMic) {
    if (!on) {
      this.stop();
      this.h.status('Hands-free is off.', 'ready');
      return;
    }
    if (!(await openMic())) {
      $('handsfree').checked = false;
      return;
    }
    this.h.clearError();
    this.start();
  }

  /** Open the socket and start streaming the microphone (the microphone must be open). */
  start() {
    if (this.ws) return;
    const mic = this.h.mic;
    this.resampler = new StreamResampler(mic.rate, ASR_RATE);
    this.reset();
    this.live.state = 'connecting';
    this.h.status('Connecting the live conversation…', 'connecting');
    const ws = new WebSocket(realtimeUrl(this.h.apiKey()));
    this.ws = ws;
    this.opened = false;
    ws.onopen = () => { this.opened = true; };
    ws.onmessage = (message) => this.onEvent(JSON.parse(message.data));
    ws.onclose = (close) => this.onClose(ws, close);
    mic.onframe = (frame) => this.onFrame(frame);
    if (mic.ctx) mic.ctx.resume();
  }

  /** Close the socket (the server cancels whatever is running) and silence the answer. */
  stop() {
    const ws = this.ws;
    if (!ws) return;
    this.interrupt();
    this.ws = null;
    this.h.mic.onframe = null;
    this.live.state = 'off';
    ws.close(1000);
    $('handsfree').checked = false;
    this.h.setBusy(false);
  }

  send(event) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(event));
  }

  sessionUpdate() {
    const session = {
      type: 'realtime',
      audio: {
        input: {
          format: { type: 'audio/pcm', rate: ASR_RATE },
          turn_detection: { type: 'server_vad', silence_duration_ms: Math.round(Number($('pause').value) * 1000),
            create_response: true, interrupt_response: $('barge-voice').checked },
        },
        output: {},
      },
    };
    if ($('voice-select') && $('voice-select').value) session.audio.output.voice = $('voice-select').value;
    if (!$('prompt-default').checked) session.instructions = $('system-prompt').value;
    this.send({ type: 'session.update', session });
  }

  onFrame(frame) {
    if (!this.ws || this.live.state !== 'listening' || this.h.mic.state === 'recording') return;
    // without "speaking interrupts", the microphone rests from the end of a question to the end of its answer
    if (!$('barge-voice').checked && (this.awaiting || this.h.player().playing)) return;
    const samples = this.resampler.push(frame);
    if (!samples.length) return;
    this.send({ type: 'input_audio_buffer.append', audio: pcm16Base64(samples) });
    this.live.frames += 1;
    this.live.sentMs += (samples.length * 1000) / ASR_RATE;
  }

  onClose(ws, close) {
    if (this.ws !== ws) return; // closed by stop()
    this.ws = null;
    this.h.mic.onframe = null;
    this.interrupt();
    this.live.state = 'off';
    $('handsfree').checked = false;
    this.h.setBusy(false);
    const why = this.opened ? `the connection closed (code ${close.code}${close.reason ? `: ${close.reason}` : ''})`
      : "the server refused it or can't be reached (check the API key under Settings)";
    this.h.showError(`The live conversation stopped: ${why}. Switch hands-free on again to reconnect.`);
    this.h.status('Hands-free is off.', 'ready');
  }

  onEvent(event) {
    this.live.events[event.type] = (this.live.events[event.type] || 0) + 1;
    const handler = HANDLERS[event.type];
    if (handler) handler.call(this, event);
  }

  // ---- the user's side ---------------------------------------------------------------------------
  onSpeechStarted(event) {
    this.interrupt($('barge-voice').checked); // with "speaking interrupts", the server has cancelled it itself
    this.awaiting = false;
    this.entry = this.h.addEntry('Hearing you…');
    this.entries.set(event.item_id, this.entry);
    this.h.status('Hearing you… pause to send.', 'recording');
  }

  onSpeechStopped(event) {
    this.speechEndAt = performance.now();
    this.awaiting = true;
    const entry = this.entries.get(event.item_id) || this.entry;
    if (entry) entry.question.textContent = 'Recognising…';
    this.h.status('Recognising your question…', 'waiting');
  }

  onTranscript(event) {
    const entry = this.entries.get(event.item_id) || this.entry;
    const text = (event.transcript || '').trim();
    if (!text) {
      this.awaiting = false;
      if (entry) entry.li.remove();
      this.h.status('Listening… speak, then pause.', 'listening');
      return;
    }
    if (entry) entry.question.textContent = text;
    this.asked = entry;
    this.lastQuestion = text;
  }

  onTranscriptFailed(event) {
    this.awaiting = false;
    const entry = this.entries.get(event.item_id) || this.entry;
    if (entry) entry.question.textContent = `(${(event.error && event.error.message) || 'not recognised'})`;
  }

  // ---- the answer ----------------------------------------------------------------------------------
  onResponseCreated(event) {
    const rec = {
      mode: 'live', responseId: event.response.id, itemId: null, question: this.lastQuestion || null, answer: '',
      status: 'running', buffers: 0, seconds: 0, gaps: 0, stallSeconds: 0, schedule: [], bytes: 0,
      ttfa: null, serverLatencyMs: null, metadata: null, serverStatus: null, playedMs: null, truncatedMs: null, sourcesAfterStop: null,
    };
    this.live.turns.push(rec);
    const entry = this.asked || this.h.addEntry('(no spoken question)');
    this.asked = null;
    this.answer = { rec, entry, done: false, pendingTruncate: null };
    const player = this.h.player();
    player.begin(rec);
    player.onidle = () => {
      if (this.answer && this.answer.rec === rec && this.answer.done) this.finishAnswer();
    };
    this.h.setBusy(true);
    this.h.status('Thinking…', 'waiting');
  }

  ours(event) {
    const a = this.answer;
    return a && a.rec.responseId === event.response_id && a.rec.status === 'running' ? a : null;
  }

  onOutputItem(event) {
    const a = this.ours(event);
    if (a) a.rec.itemId = event.item.id;
  }

  onAnswerText(event) {
    const a = this.ours(event);
    if (!a) return;
    a.rec.answer += event.delta;
    a.entry.answer.textContent = `${a.rec.answer} …`;
  }

  onAudio(event) {
    const a = this.ours(event);
    if (!a) return; // audio of an answer already interrupted
    const samples = pcm16Floats(event.delta);
    a.rec.bytes += samples.length * 2;
    if (a.rec.ttfa === null) {
      a.rec.ttfa = this.speechEndAt === null ? null : (performance.now() - this.speechEndAt) / 1000;
      this.h.status('Speaking… (speak to interrupt)', 'playing');
    }
    this.h.player().push(samples);
  }

  onResponseDone(event) {
    const a = this.answer;
    if (!a || a.rec.responseId !== event.response.id) return;
    const response = event.response;
    a.done = true;
    a.rec.metadata = response.metadata || null;
    a.rec.serverStatus = response.status;
    const failure = response.status === 'failed' && response.status_details && response.status_details.error;
    if (failure) this.h.showError(`The live conversation could not answer: ${failure.message || failure.code}`);
    const latency = response.metadata && Number(response.metadata.end_of_speech_to_first_audio_ms);
    a.rec.serverLatencyMs = Number.isFinite(latency) ? latency : null;
    const part = response.output && response.output[0] && response.output[0].content && response.output[0].content[0];
    if (part && a.rec.status === 'running') {
      a.rec.answer = part.transcript || part.text || a.rec.answer;
      a.entry.answer.textContent = a.rec.answer || '(no words)';
    }
    if (a.pendingTruncate !== null) this.sendTruncate(a, a.pendingTruncate);
    if (a.rec.status === 'running') {
      a.rec.status = response.status === 'completed' ? 'done' : response.status;
      this.h.player().end(); // onidle: when the last buffer has played
    } else {
      this.showLatency(a);
    }
  }

  onTruncated(event) {
    const a = this.answer;
    if (a && a.rec.itemId === event.item_id) a.rec.truncatedMs = event.audio_end_ms;
    this.live.truncations.push(event.audio_end_ms);
  }

  finishAnswer() {
    const a = this.answer;
    a.rec.audioSeconds = a.rec.seconds;
    this.showLatency(a);
    this.awaiting = false;
    this.h.setBusy(false);
    this.h.status('Listening… speak, then pause.', 'listening');
  }

  showLatency(a) {
    const r = a.rec;
    const m = r.metadata || {};
    const parts = [`end of speech → first audio ${ms(r.serverLatencyMs)} (server)`];
    if (r.ttfa !== null) parts.push(`${ms(r.ttfa * 1000)} from its end of turn (speech_stopped)`);
    if (m.asr_ms) parts.push(`speech recognition ${ms(Number(m.asr_ms))}`);
    if (m.llm_first_token_ms) parts.push(`first word ${ms(Number(m.llm_first_token_ms))}`);
    parts.push(`${r.seconds.toFixed(2)} s of speech`);
    if (r.status === 'interrupted') parts.push(`interrupted after ${ms(r.playedMs)} played`);
    if (r.gaps) parts.push(`${r.gaps} playback gap${r.gaps > 1 ? 's' : ''}`);
    a.entry.metrics.textContent = parts.join(' · ');
  }

  /** Barge-in (the user spoke, or pressed Stop): silence the answer now and tell the server what was played. */
  interrupt(serverCancelled = false) {
    const a = this.answer;
    if (!a || a.rec.status === 'interrupted') return;
    const player = this.h.player();
    const playing = a.rec.status === 'running' || player.playing;
    if (!playing) return;
    const played = Math.floor(playedSeconds(a.rec.schedule, player.ctx.currentTime) * 1000);
    const received = Math.floor((a.rec.bytes / 2) * 1000 / OUTPUT_RATE);
    player.stop();
    a.rec.sourcesAfterStop = player.sources.size;
    a.rec.playedMs = Math.min(played, received);
    a.rec.status = 'interrupted';
    a.entry.li.classList.add('stopped');
    a.entry.answer.textContent = `${a.rec.answer || ''} (interrupted)`.trim();
    this.h.setBusy(false);
    if (!a.done && !serverCancelled) this.send({ type: 'response.cancel', response_id: a.rec.responseId });
    // the item can be cut once the server has finished the response (response.done)
    if (a.done) this.sendTruncate(a, a.rec.playedMs);
    else a.pendingTruncate = a.rec.playedMs;
    this.showLatency(a);
  }

  sendTruncate(a, audioEndMs) {
    a.pendingTruncate = null;
    if (!a.rec.itemId) return;
    this.send({ type: 'conversation.item.truncate', item_id: a.rec.itemId, content_index: 0, audio_end_ms: audioEndMs });
  }

  onError(event) {
    const error = event.error || {};
    this.live.errors.push(error.code || 'error');
    if (QUIET_ERRORS.has(error.code)) return;
    this.h.showError(`The live conversation: ${error.message || error.code || 'error'}`);
  }
}

const HANDLERS = {
  'session.created': function created() {
    this.sessionUpdate();
    this.live.state = 'listening';
    this.h.status('Listening… speak, then pause (live: WS /v1/realtime).', 'listening');
  },
  'input_audio_buffer.speech_started': LiveConversation.prototype.onSpeechStarted,
  'input_audio_buffer.speech_stopped': LiveConversation.prototype.onSpeechStopped,
  'conversation.item.input_audio_transcription.completed': LiveConversation.prototype.onTranscript,
  'conversation.item.input_audio_transcription.failed': LiveConversation.prototype.onTranscriptFailed,
  'response.created': LiveConversation.prototype.onResponseCreated,
  'response.output_item.added': LiveConversation.prototype.onOutputItem,
  'response.output_audio_transcript.delta': LiveConversation.prototype.onAnswerText,
  'response.output_text.delta': LiveConversation.prototype.onAnswerText,
  'response.output_audio.delta': LiveConversation.prototype.onAudio,
  'response.done': LiveConversation.prototype.onResponseDone,
  'conversation.item.truncated': LiveConversation.prototype.onTruncated,
  error: LiveConversation.prototype.onError,
};
