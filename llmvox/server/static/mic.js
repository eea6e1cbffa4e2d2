// The microphone: capture, level, voice activity detection (energy based) and the question as WAV.
//
// Two ways to talk: push-to-talk (`startRecording()` ... `stopRecording()`), and hands-free
// (`listen()`), where speech louder than the threshold starts a recording (with a little audio from
// just before it, so the first syllable is kept) and a pause ends it. Recordings are resampled to
// 16 kHz by the browser (OfflineAudioContext) and sent as a 16-bit WAV, which the server takes at any rate.

import { bytesToBase64, concatFloat32, encodeWav } from './wav.js';

const FRAME_SECONDS = 0.02;
const PRE_ROLL_SECONDS = 0.3;
const START_FRAMES = 3; // consecutive loud frames that start a hands-free recording (60 ms)
export const ASR_RATE = 16000;

export class MicError extends Error {
  constructor(message, code) {
    super(message);
    this.name = 'MicError';
    this.code = code;
  }
}

/** A getUserMedia failure (microphone or camera) in plain words. */
export function explainMediaError(error, device = 'microphone') {
  const name = error && error.name;
  if (name === 'NotAllowedError' || name === 'SecurityError' || name === 'PermissionDeniedError') {
    return `Access to the ${device} was blocked. Allow the ${device} for this page (the icon in the address bar), ` +
      'then try again.';
  }
  if (name === 'NotFoundError' || name === 'DevicesNotFoundError' || name === 'OverconstrainedError') {
    return `No ${device} was found. Connect one and try again.`;
  }
  if (name === 'NotReadableError' || name === 'TrackStartError' || name === 'AbortError') {
    return `The ${device} could not be opened: another program may be using it.`;
  }
  return `The ${device} could not be used (${(error && error.message) || error}).`;
}

export function mediaAvailable(device = 'microphone') {
  if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) return null;
  if (!window.isSecureContext) {
    return `The browser only allows the ${device} on https:// pages or on localhost. Open this page through ` +
      'localhost (for example: run_ui.py on this computer) or serve it over https.';
  }
  return `This browser can't use a ${device} here.`;
}

export function dbfs(rms) {
  return rms > 0 ? 20 * Math.log10(rms) : -120;
}

export class Microphone {
  constructor() {
    this.ctx = null;
    this.stream = null;
    this.state = 'closed'; // closed | idle | listening | recording
    this.thresholdDb = -45;
    this.silenceSeconds = 0.8;
    this.maxSeconds = 60;
    this.level = 0; // RMS of the latest frame, for the meter
    this.onlevel = null; // (rms) per frame
    this.onspeechstart = null; // hands-free: a recording started
    this.onutterance = null; // hands-free: ({wavBase64, seconds}) a recording ended
    this.onlimit = null; // a recording reached maxSeconds
    this.onframe = null; // (Float32Array at this.rate) every 20 ms frame
    this._frames = [];
    this._preRoll = [];
    this._loud = 0;
    this._quiet = 0;
    this._handsFree = false;
  }

  async open() {
    if (this.state !== 'closed') return;
    const unavailable = mediaAvailable('microphone');
    if (unavailable) throw new MicError(unavailable, 'unavailable');
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
    } catch (error) {
      throw new MicError(explainMediaError(error, 'microphone'), error.name || 'error');
    }
    this.ctx = new AudioContext();
    try {
      await this.ctx.audioWorklet.addModule(new URL('capture-worklet.js', import.meta.url));
    } catch (error) {
      this.close();
      throw new MicError(`The page could not start recording (${error.message}).`, 'worklet');
    }
    const source = this.ctx.createMediaStreamSource(this.stream);
    const frameSize = Math.round(this.ctx.sampleRate * FRAME_SECONDS);
    this.node = new AudioWorkletNode(this.ctx, 'llmvox-capture', { processorOptions: { frameSize } });
    this.node.port.onmessage = (event) => this._frame(event.data);
    const mute = this.ctx.createGain(); // keeps the node pulled without playing the microphone aloud
    mute.gain.value = 0;
    source.connect(this.node);
    this.node.connect(mute);
    mute.connect(this.ctx.destination);
    this.rate = this.ctx.sampleRate;
    this.state = 'idle';
  }

  close() {
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    if (this.ctx) this.ctx.close();
    this.stream = this.ctx = null;
    this.state = 'closed';
    this._handsFree = false;
    this._frames = [];
  }

  /** Push-to-talk: record from now on. */
  startRecording() {
    this._frames = [];
    this._quiet = 0;
    this.state = 'recording';
    if (this.ctx) this.ctx.resume();
  }

  /** Push-to-talk: stop; resolves to {wavBase64, seconds, peakDb} (seconds 0 when nothing was recorded). */
  async stopRecording() {
    const frames = this._frames;
    this._frames = [];
    this.state = this._handsFree ? 'listening' : 'idle';
    return encodeQuestion(frames, this.rate);
  }

  /** Hands-free: wait for speech, record it, hand it over at the next pause; repeat until `stopListening()`. */
  listen() {
    this._handsFree = true;
    this._preRoll = [];
    this._loud = 0;
    if (this.state !== 'recording') this.state = 'listening';
    if (this.ctx) this.ctx.resume();
  }

  stopListening() {
    this._handsFree = false;
    if (this.state === 'listening') this.state = 'idle';
  }

  /** Hands-free detection on hold (while an answer plays) or back on. */
  pause(paused) {
    this._paused = paused;
    this._loud = 0;
  }

  get handsFree() {
    return this._handsFree;
  }

  _frame(frame) {
    let sum = 0;
    for (let i = 0; i < frame.length; i++) sum += frame[i] * frame[i];
    const rms = Math.sqrt(sum / frame.length);
    this.level = rms;
    if (this.onlevel) this.onlevel(rms);
    if (this.onframe) this.onframe(frame); // the live conversation streams every frame (realtime.js)
    const loud = dbfs(rms) >= this.thresholdDb;
    if (this.state === 'recording') {
      this._frames.push(frame);
      if (this._frames.length * FRAME_SECONDS >= this.maxSeconds) {
        if (this.onlimit) this.onlimit();
        else if (this._handsFree) this._endUtterance();
        return;
      }
      if (this._handsFree && this._autoStarted) {
        this._quiet = loud ? 0 : this._quiet + 1;
        if (this._quiet * FRAME_SECONDS >= this.silenceSeconds) this._endUtterance();
      }
      return;
    }
    if (this.state !== 'listening' || this._paused) return;
    this._preRoll.push(frame);
    const keep = Math.ceil(PRE_ROLL_SECONDS / FRAME_SECONDS) + START_FRAMES;
    if (this._preRoll.length > keep) this._preRoll.shift();
    this._loud = loud ? this._loud + 1 : 0;
    if (this._loud >= START_FRAMES) {
      this._frames = this._preRoll;
      this._preRoll = [];
      this._quiet = 0;
      this._autoStarted = true;
      this.state = 'recording';
      if (this.onspeechstart) this.onspeechstart();
    }
  }

  async _endUtterance() {
    const frames = this._frames;
    this._frames = [];
    this._autoStarted = false;
    this.state = this._handsFree ? 'listening' : 'idle';
    this._loud = 0;
    const question = await encodeQuestion(frames, this.rate);
    if (this.onutterance) this.onutterance(question);
  }
}

/** Frames at `rate` -> {wavBase64 (16 kHz 16-bit WAV), seconds, peakDb}. */
export async function encodeQuestion(frames, rate) {
  const samples = concatFloat32(frames);
  const seconds = samples.length / rate;
  if (!samples.length) return { wavBase64: '', seconds: 0, peakDb: -120 };
  let peak = 0;
  for (let i = 0; i < samples.length; i++) peak = Math.max(peak, Math.abs(samples[i]));
  const at16k = await resample(samples, rate, ASR_RATE);
  return { wavBase64: bytesToBase64(encodeWav(at16k, ASR_RATE)), seconds, peakDb: dbfs(peak) };
}

/** The browser's own resampler (band-limited), through an OfflineAudioContext. */
export async function resample(samples, from, to) {
  if (from === to) return samples;
  const length = Math.max(1, Math.round(samples.length * to / from));
  const offline = new OfflineAudioContext(1, length, to);
  const buffer = offline.createBuffer(1, samples.length, from);
  buffer.copyToChannel(samples, 0);
  const source = offline.createBufferSource();
  source.buffer = buffer;
  source.connect(offline.destination);
  source.start();
  const rendered = await offline.startRendering();
  return rendered.getChannelData(0);
}

/** The webcam: a live preview in a <video> and still snapshots as JPEG blobs. */
export class Camera {
  constructor(video) {
    this.video = video;
    this.stream = null;
  }

  get open() {
    return this.stream !== null;
  }

  async start() {
    const unavailable = mediaAvailable('camera');
    if (unavailable) throw new MicError(unavailable, 'unavailable');
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 } },
      });
    } catch (error) {
      throw new MicError(explainMediaError(error, 'camera'), error.name || 'error');
    }
    this.video.srcObject = this.stream;
    await this.video.play();
  }

  stop() {
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    this.stream = null;
    this.video.srcObject = null;
  }

  async snapshot() {
    const { videoWidth: w, videoHeight: h } = this.video;
    if (!w || !h) throw new MicError('The camera has no picture yet: wait a moment and try again.', 'no_frame');
    const canvas = document.createElement('canvas');
    canvas.width = w;
    canvas.height = h;
    canvas.getContext('2d').drawImage(this.video, 0, 0, w, h);
    return new Promise((resolve) => canvas.toBlob(resolve, 'image/jpeg', 0.9));
  }
}
