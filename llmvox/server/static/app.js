// The llmvox page: chat modes, turns, playback, microphone, pictures, settings.
//
// One turn at a time: starting a new one (or pressing Stop / Escape, or talking over the answer)
// aborts the running request, which cancels the answer on the server, and silences what was
// scheduled. `window.__llmvoxStats` counts what was played, per turn, for tests and for the curious.

import { Float32Reader, getInfo, getTranscript, startChat } from './api.js';
import { Camera, Microphone, dbfs } from './mic.js';
import { StreamPlayer } from './player.js';
import { LiveConversation } from './realtime.js';
import { blobToBase64, concatFloat32, encodeWav } from './wav.js';

const $ = (id) => document.getElementById(id);
const MODES = ['text', 'voice', 'visual_speech', 'multimodal', 'tts'];
const MODE_NAMES = {
  text: 'text', voice: 'voice', visual_speech: 'picture + voice', multimodal: 'multimodal', tts: 'read aloud',
};
const TYPED = ['text', 'tts']; // modes without the microphone
const LONG_PRESS_MS = 350;
const MIN_QUESTION_SECONDS = 0.3;

const stats = {
  ready: false, state: 'starting', mode: null, buffers: 0, seconds: 0, gaps: 0, recordings: 0,
  turns: [], errors: [], downloads: [],
};
window.__llmvoxStats = stats;

const app = {
  info: null,
  mode: 'text',
  player: null,
  mic: new Microphone(),
  camera: null,
  busy: false,
  turn: null, // the answer in progress
  last: null, // {samples, requestId, sampleRate}: for replay and download
  images: { visual_speech: [], multimodal: [] }, // {name, url, base64, bytes}
  snapshots: 0,
};
app.live = new LiveConversation({ // hands-free on the Voice tab: WS /v1/realtime (realtime.js)
  mic: app.mic, stats, player: () => app.player, apiKey, status, showError, clearError, setBusy,
  addEntry: (question) => addEntry('voice', question),
});

// ---- status, errors ------------------------------------------------------------------------------
function status(text, state) {
  $('status').textContent = text;
  if (state) stats.state = state;
}

function showError(message, retry) {
  $('error-text').textContent = message;
  $('error').hidden = false;
  const button = $('error-retry');
  button.hidden = !retry;
  button.onclick = retry ? () => { clearError(); retry(); } : null;
  stats.errors.push(message);
}

function clearError() {
  $('error').hidden = true;
  $('error-text').textContent = '';
}

function apiKey() {
  return $('api-key').value.trim() || null;
}

// ---- connecting ----------------------------------------------------------------------------------
async function connect() {
  status('Connecting to the server…', 'connecting');
  let info;
  try {
    info = await getInfo(apiKey());
  } catch (error) {
    $('server-line').textContent = 'Not connected.';
    status('Not connected.', 'error');
    showError(error.message, connect);
    return;
  }
  app.info = info;
  if (!app.player) app.player = new StreamPlayer(info.voice.sample_rate || 24000, stats);
  app.mic.maxSeconds = (info.limits && info.limits.max_audio_seconds) || 60;
  describeServer(info);
  const wanted = location.hash.replace('#', '');
  const first = [wanted, info.chat_type, ...MODES].find((m) => MODES.includes(m) && info.modes[m].available);
  selectMode(first || 'text', false);
  if (info.api_key_required && !info.authorized) {
    $('settings').open = true;
    showError('This server needs an API key. Enter it under Settings, then press Try again.', connect);
  } else {
    clearError();
  }
  stats.ready = true;
  status('Ready.', 'ready');
}

function fact(list, name, value) {
  const dt = document.createElement('dt');
  dt.textContent = name;
  const dd = document.createElement('dd');
  dd.textContent = value;
  list.append(dt, dd);
}

function showVoices(voices) {
  // the picker appears when the server has several voices (llmvox serve --voices DIR)
  const select = $('voice-select');
  const kept = select.value;
  select.replaceChildren(...voices.map((v) => {
    const option = document.createElement('option');
    option.value = v.name;
    option.textContent = `${v.name}${v.default ? ' (default)' : ''} · ${v.language}, ${v.text_frontend}`;
    option.selected = kept ? v.name === kept : v.default;
    return option;
  }));
  $('voice-field').hidden = voices.length < 2;
}

function describeServer(info) {
  const where = info.proxyUpstream ? `${info.proxyUpstream} (through the UI proxy at ${location.host})` : location.host;
  const voice = info.voice.name || 'voice';
  $('server-line').textContent = `Connected to ${where} · chat type ${info.chat_type} · ${voice}, ` +
    `${info.voice.sample_rate / 1000} kHz`;
  const chunks = $('chunk-info');
  chunks.replaceChildren();
  const s = info.stream;
  fact(chunks, 'First chunk (worker 1 / 2)', `${s.initial_dump_size_1} / ${s.initial_dump_size_2} codes`);
  fact(chunks, 'Growth', 'x3 per chunk');
  fact(chunks, 'Largest chunk', `${s.max_dump_size} codes`);
  fact(chunks, 'Joins', s.chunk_join === 'context' ? 'seamless (decoded with context)' : 'original (independent)');
  fact(chunks, 'Workers', String(s.workers));
  const models = $('model-info');
  models.replaceChildren();
  fact(models, 'Voice', `${voice} (${info.voice.sample_rate} Hz)`);
  showVoices(info.voices || []);
  fact(models, 'Language model', info.llm ? info.llm.name : 'none (speech only)');
  fact(models, 'Speech recognition', info.asr ? info.asr.name : 'none');
  fact(models, 'Chat type', info.chat_type);
  fact(models, 'Server version', info.version);
  if (info.limits.max_images) fact(models, 'Pictures per question', String(info.limits.max_images));
  const prompt = $('system-prompt');
  if ($('prompt-default').checked) {
    prompt.value = info.system_prompt || '';
    prompt.placeholder = info.system_prompt === null ? "(the server's own prompt)" : '';
  }
  for (const mode of MODES) {
    const m = info.modes[mode];
    const tab = $(`tab-${mode}`);
    tab.classList.toggle('off', !m.available);
    tab.title = m.available ? '' : `Not available on this server: ${m.reason}`;
    const note = $(`panel-${mode}`).querySelector('.unavailable');
    note.hidden = m.available;
    note.textContent = m.available ? '' : `Not available on this server: ${m.reason}`;
  }
}

// ---- modes (tabs) --------------------------------------------------------------------------------
function modeAvailable(mode = app.mode) {
  return Boolean(app.info && app.info.modes[mode] && app.info.modes[mode].available);
}

function selectMode(mode, focus) {
  app.mode = mode;
  stats.mode = mode;
  for (const m of MODES) {
    const tab = $(`tab-${m}`);
    const selected = m === mode;
    tab.setAttribute('aria-selected', String(selected));
    tab.tabIndex = selected ? 0 : -1;
    $(`panel-${m}`).hidden = !selected;
    if (selected && focus) tab.focus();
  }
  const available = modeAvailable(mode);
  const speech = !TYPED.includes(mode);
  $('speech-controls').hidden = !speech;
  $('talk').disabled = !available;
  $('handsfree').disabled = !available;
  $('text-input').disabled = mode === 'text' && !available;
  $('send-text').disabled = mode === 'text' && !available;
  $('tts-input').disabled = mode === 'tts' && !available;
  $('send-tts').disabled = mode === 'tts' && !available;
  for (const el of document.querySelectorAll(`#panel-${mode} input, #panel-${mode} button`)) el.disabled = !available;
  if (mode !== 'voice') app.live.stop();
  if ((!speech || !available) && $('handsfree').checked) {
    $('handsfree').checked = false;
    app.mic.stopListening();
  }
  if (!['visual_speech', 'multimodal'].includes(mode)) stopCamera();
  if (!speech && app.mic.state !== 'closed') { // the microphone stays open on the speech tabs only
    app.mic.close();
    $('mic-level').value = 0;
  }
  history.replaceState(null, '', `#${mode}`);
}

function onTabKey(event) {
  const index = MODES.indexOf(app.mode);
  let next = null;
  if (event.key === 'ArrowRight' || event.key === 'ArrowDown') next = MODES[(index + 1) % MODES.length];
  else if (event.key === 'ArrowLeft' || event.key === 'ArrowUp') {
    next = MODES[(index + MODES.length - 1) % MODES.length];
  }
  else if (event.key === 'Home') next = MODES[0];
  else if (event.key === 'End') next = MODES[MODES.length - 1];
  if (next) {
    event.preventDefault();
    selectMode(next, true);
  }
}

// ---- the conversation log ------------------------------------------------------------------------
function addEntry(mode, question, images) {
  const li = document.createElement('li');
  li.className = 'turn';
  const you = document.createElement('div');
  you.className = 'you';
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = `You (${MODE_NAMES[mode]})`;
  const q = document.createElement('p');
  q.className = 'question';
  q.textContent = question || (mode === 'multimodal' ? '(spoken question: the model hears it)' : 'Recognising…');
  you.append(who, q);
  if (images && images.length) {
    const row = document.createElement('div');
    row.className = 'turn-images';
    for (const image of images) {
      const img = document.createElement('img');
      img.src = image.url;
      img.alt = `Picture: ${image.name}`;
      row.append(img);
    }
    you.append(row);
  }
  const bot = document.createElement('div');
  bot.className = 'bot';
  const who2 = document.createElement('span');
  who2.className = 'who';
  who2.textContent = 'llmvox';
  const a = document.createElement('p');
  a.className = 'answer';
  a.textContent = '…';
  const metrics = document.createElement('p');
  metrics.className = 'metrics muted small';
  bot.append(who2, a, metrics);
  li.append(you, bot);
  $('log').append(li);
  li.scrollIntoView({ block: 'nearest' });
  return { li, question: q, answer: a, metrics };
}

function seconds(x) {
  return x === null || x === undefined ? '–' : `${x.toFixed(2)} s`;
}

function showMetrics(turn) {
  const r = turn.rec;
  const parts = [`first audio after ${seconds(r.ttfa)}`];
  if (r.asrSeconds) parts.push(`of which speech recognition ${seconds(r.asrSeconds)}`);
  if (r.status === 'stopped') {
    parts.push(`stopped after ${seconds(r.stoppedAfter)}`, `${seconds(r.audioSeconds)} of speech received`);
  } else {
    parts.push(`complete after ${seconds(r.total)}`, `${seconds(r.audioSeconds)} of speech`);
  }
  if (r.rtf !== null) parts.push(`real-time factor ${r.rtf.toFixed(2)}${r.rtf < 1 ? ' (faster than real time)' : ''}`);
  if (r.gaps) parts.push(`${r.gaps} playback gap${r.gaps > 1 ? 's' : ''} (${seconds(r.stallSeconds || 0)} stalled)`);
  turn.entry.metrics.textContent = parts.join(' · ');
}

function showTranscript(turn, snap) {
  if (!snap) return;
  if (snap.question && turn.entry.question.textContent !== snap.question && !TYPED.includes(turn.mode)) {
    turn.entry.question.textContent = snap.question;
    turn.rec.question = snap.question;
  }
  turn.rec.answer = snap.answer || '';
  turn.rec.transcriptDone = Boolean(snap.done);
  if (snap.asr_seconds && !turn.rec.asrSeconds) {
    turn.rec.asrSeconds = snap.asr_seconds;
    if (turn.rec.status !== 'running') showMetrics(turn);
  }
  if (snap.answer) turn.entry.answer.textContent = snap.answer + (snap.done ? '' : ' …');
  if (snap.words && snap.words.length && !snap.error) showWords(turn, snap);
  if (snap.done && snap.error) turn.entry.answer.textContent += ` (${snap.error})`;
}

// The answer as its spoken words (the transcript's word timestamps), the one being heard highlighted:
// a word's times are seconds of the answer's audio, mapped onto the player's schedule of buffers.
function showWords(turn, snap) {
  const el = turn.entry.answer;
  el.textContent = '';
  for (const w of snap.words) {
    const span = document.createElement('span');
    span.textContent = `${w.word} `;
    el.appendChild(span);
  }
  if (!snap.done) el.appendChild(document.createTextNode('…'));
  turn.words = snap.words;
  if (!turn.highlighting) {
    turn.highlighting = true;
    requestAnimationFrame(() => highlightWord(turn));
  }
}

function heardSeconds(schedule, now) {
  let heard = 0;
  for (const [when, duration] of schedule) {
    if (now <= when) break;
    heard += Math.min(duration, now - when);
  }
  return heard;
}

function highlightWord(turn) {
  const player = app.player;
  const spans = turn.entry.answer.querySelectorAll('span');
  const t = player ? heardSeconds(turn.rec.schedule || [], player.ctx.currentTime) : Infinity;
  turn.words.forEach((w, i) => spans[i] && spans[i].classList.toggle('speaking', w.start <= t && t < w.end));
  if (player && (player.playing || turn.rec.status === 'running')) {
    requestAnimationFrame(() => highlightWord(turn));
  } else {
    turn.highlighting = false;
    spans.forEach((span) => span.classList.remove('speaking'));
  }
}

// ---- a turn --------------------------------------------------------------------------------------
function setBusy(busy) {
  app.busy = busy;
  $('stop').disabled = !busy;
  $('replay').disabled = busy || !app.last;
  $('download').disabled = !app.last;
  if (app.mic.handsFree) app.mic.pause(busy && !$('barge-voice').checked);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function followTranscript(turn) {
  const id = turn.rec.requestId;
  if (!id) return;
  try {
    while (!turn.streamEnded && !turn.controller.signal.aborted) {
      const snap = await getTranscript(id, { apiKey: apiKey() });
      showTranscript(turn, snap);
      // the text is done when the LLM stops; its spoken words' times keep coming while it is spoken
      if (snap.done && snap.words_done !== false) break;
      await sleep(400);
    }
    const wait = turn.controller.signal.aborted ? 0 : 15;
    showTranscript(turn, await getTranscript(id, { wait, apiKey: apiKey() }));
  } catch (error) {
    console.warn('transcript side channel:', error);
  }
}

async function runTurn(mode, body, view) {
  if (!app.info) {
    showError('Not connected to a server yet.', connect);
    return;
  }
  if (!modeAvailable(mode)) {
    showError(`This server can't do that: ${app.info.modes[mode].reason}`);
    return;
  }
  stopTurn(); // a new question interrupts the answer in progress
  clearError();
  if (!$('prompt-default').checked && mode !== 'tts') body.system_prompt = $('system-prompt').value;
  if ($('voice-select').value) body.voice = $('voice-select').value; // the server's default when none is picked
  const rec = {
    mode, requestId: null, question: view.question || null, answer: '', status: 'running', error: null,
    asrSeconds: null, stoppedAfter: null,
    buffers: 0, seconds: 0, gaps: 0, stallSeconds: 0, ttfa: null, total: null, audioSeconds: null, rtf: null, bytes: 0,
    schedule: [], // [start time, duration] of every AudioBuffer, in the AudioContext's clock
  };
  stats.turns.push(rec);
  const turn = { mode, rec, controller: new AbortController(), samples: [], streamEnded: false,
    entry: addEntry(mode, view.question, view.images) };
  app.turn = turn;
  setBusy(true);
  const player = app.player;
  await player.resume();
  player.begin(rec);
  player.onidle = () => {
    if (app.turn === turn) {
      app.turn = null;
      setBusy(false);
      status('Ready.', 'ready');
    }
  };
  const waiting = { tts: 'Reading…', text: 'Thinking…', multimodal: 'Thinking…' }[mode] || 'Recognising your question…';
  status(waiting, 'waiting');
  const t0 = performance.now();
  turn.t0 = t0;
  let started;
  try {
    started = await startChat(app.info.modes[mode].path, body, { apiKey: apiKey(), signal: turn.controller.signal });
  } catch (error) {
    failTurn(turn, error);
    return;
  }
  rec.requestId = started.requestId;
  if (mode === 'tts') turn.entry.answer.textContent = '(your text, read aloud)';
  if (started.question) {
    rec.question = started.question;
    turn.entry.question.textContent = started.question;
  }
  followTranscript(turn);
  status('Answering…', 'streaming');
  const reader = started.response.body.getReader();
  const floats = new Float32Reader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      rec.bytes += value.length;
      const samples = floats.push(value);
      if (!samples.length) continue;
      if (rec.ttfa === null) {
        rec.ttfa = (performance.now() - t0) / 1000;
        status('Speaking…', 'playing');
      }
      turn.samples.push(samples);
      player.push(samples);
    }
  } catch (error) {
    if (turn.controller.signal.aborted) return;
    failTurn(turn, new Error('The answer was cut off: the connection to the server was lost.'));
    return;
  }
  turn.streamEnded = true;
  rec.total = (performance.now() - t0) / 1000;
  const all = concatFloat32(turn.samples);
  rec.audioSeconds = all.length / player.sampleRate;
  rec.rtf = rec.audioSeconds > 0 ? rec.total / rec.audioSeconds : null;
  rec.status = 'done';
  app.last = { samples: all, requestId: rec.requestId, sampleRate: player.sampleRate };
  showMetrics(turn);
  if (app.turn === turn) {
    $('download').disabled = false;
    player.end(); // onidle: when the last buffer has played
  }
}

function failTurn(turn, error) {
  if (error && error.name === 'AbortError') return;
  turn.rec.status = 'error';
  turn.rec.error = error.message;
  turn.entry.answer.textContent = `(${error.message})`;
  turn.entry.li.classList.add('failed');
  if (app.turn === turn) {
    app.turn = null;
    app.player.stop();
    setBusy(false);
  }
  showError(error.message);
  status('Ready.', 'ready');
}

/** Barge-in: cancel the answer on the server (abort the request) and silence the speakers. */
function stopTurn() {
  app.live.interrupt(); // a live conversation's answer, if one is playing
  const turn = app.turn;
  if (app.player) app.player.stop();
  if (!turn) {
    if (app.busy) {
      setBusy(false);
      status('Stopped.', 'ready');
    }
    return;
  }
  app.turn = null;
  turn.controller.abort();
  if (turn.rec.status === 'running') {
    const rec = turn.rec;
    rec.status = 'stopped';
    rec.stoppedAfter = turn.t0 === undefined ? null : (performance.now() - turn.t0) / 1000;
    if (turn.samples.length) { // what was heard so far can still be replayed and saved
      const all = concatFloat32(turn.samples);
      rec.audioSeconds = all.length / app.player.sampleRate;
      app.last = { samples: all, requestId: rec.requestId, sampleRate: app.player.sampleRate };
    }
    showMetrics(turn);
    turn.entry.li.classList.add('stopped');
    if (turn.entry.answer.textContent === '…') turn.entry.answer.textContent = '(stopped before the answer began)';
  }
  setBusy(false);
  status('Stopped.', 'ready');
}

// ---- replay and download -------------------------------------------------------------------------
async function replay() {
  if (!app.last || !app.player) return;
  stopTurn();
  const player = app.player;
  await player.resume();
  player.begin({ buffers: 0, seconds: 0, gaps: 0 });
  app.busy = true;
  setBusy(true);
  player.onidle = () => {
    setBusy(false);
    status('Ready.', 'ready');
  };
  status('Replaying the last answer…', 'playing');
  player.push(app.last.samples);
  player.end();
}

function download() {
  if (!app.last) return;
  const bytes = encodeWav(app.last.samples, app.last.sampleRate);
  const url = URL.createObjectURL(new Blob([bytes], { type: 'audio/wav' }));
  const a = document.createElement('a');
  a.href = url;
  a.download = `llmvox-answer-${app.last.requestId || 'last'}.wav`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  stats.downloads.push({ name: a.download, bytes: bytes.length });
  status(`Saved ${a.download}.`);
}

// ---- speaking: push-to-talk and hands-free -------------------------------------------------------
const ptt = { down: false, pressAt: 0, toggled: false, consumed: false, byKey: false };

function setTalking(on, text) {
  const talk = $('talk');
  talk.setAttribute('aria-pressed', String(on));
  talk.classList.toggle('recording', on);
  talk.textContent = text || (on ? 'Recording… release to send' : 'Hold to talk');
}

async function openMic() {
  try {
    await app.mic.open();
    return true;
  } catch (error) {
    showError(error.message);
    status('The microphone is not available.', 'error');
    return false;
  }
}

async function pressTalk() {
  if (TYPED.includes(app.mode) || !modeAvailable() || ptt.down) return;
  ptt.down = true;
  if (app.mic.state === 'recording' && ptt.toggled) { // second press of a click-to-talk: send
    ptt.toggled = false;
    ptt.consumed = true;
    await finishRecording();
    return;
  }
  ptt.consumed = false;
  ptt.pressAt = performance.now();
  stopTurn(); // talking over the answer interrupts it
  if (!(await openMic())) {
    ptt.down = false;
    return;
  }
  clearError();
  app.mic.startRecording();
  if (ptt.down) {
    setTalking(true);
    status('Recording… release to send.', 'recording');
  } else { // released while the microphone was opening: a click, so keep recording until the next press
    ptt.toggled = true;
    setTalking(true, 'Recording… press again to send');
    status('Recording… press the talk button again to send.', 'recording');
  }
}

async function releaseTalk() {
  if (!ptt.down) return;
  ptt.down = false;
  if (ptt.consumed) {
    ptt.consumed = false;
    return;
  }
  if (app.mic.state !== 'recording') return; // still opening: pressTalk() takes it from here
  if (performance.now() - ptt.pressAt >= LONG_PRESS_MS) {
    await finishRecording();
  } else {
    ptt.toggled = true;
    setTalking(true, 'Recording… press again to send');
    status('Recording… press the talk button again to send.', 'recording');
  }
}

async function finishRecording() {
  setTalking(false);
  const question = await app.mic.stopRecording();
  stats.recordings += 1;
  if (question.seconds < MIN_QUESTION_SECONDS) {
    showError('That was too short: hold the talk button while you speak, or click it once to start and again to send.');
    status('Ready.', 'ready');
    return;
  }
  if (question.peakDb < -70) {
    showError('The recording is silent. Check that the microphone is connected and not muted.');
    status('Ready.', 'ready');
    return;
  }
  sendSpeech(question);
}

async function toggleHandsFree() {
  const box = $('handsfree');
  if (app.live.active || (box.checked && app.live.usable(app.info, app.mode))) {
    await app.live.toggle(box.checked, openMic);
    return;
  }
  if (!box.checked) {
    app.mic.stopListening();
    status('Hands-free is off.', 'ready');
    return;
  }
  if (!(await openMic())) {
    box.checked = false;
    return;
  }
  applyListeningSettings();
  app.mic.listen();
  app.mic.pause(app.busy && !$('barge-voice').checked);
  status('Listening… speak, then pause.', 'listening');
}

function applyListeningSettings() {
  app.mic.thresholdDb = Number($('threshold').value);
  app.mic.silenceSeconds = Number($('pause').value);
  $('threshold-out').textContent = $('threshold').value;
  $('pause-out').textContent = $('pause').value;
}

app.mic.onspeechstart = () => {
  if (app.busy) stopTurn(); // only reached while busy when "speaking interrupts" is on
  setTalking(true, 'Hearing you…');
  status('Hearing you… pause to send.', 'recording');
};

app.mic.onutterance = (question) => {
  setTalking(false);
  stats.recordings += 1;
  if (question.seconds < MIN_QUESTION_SECONDS) {
    status('Listening… speak, then pause.', 'listening');
    return;
  }
  sendSpeech(question);
};

app.mic.onlimit = () => {
  if (app.mic.handsFree && !ptt.down && !ptt.toggled) return; // hands-free ends it itself
  ptt.toggled = false;
  ptt.down = false;
  finishRecording();
};

app.mic.onlevel = (rms) => {
  $('mic-level').value = Math.max(0, Math.min(1, (dbfs(rms) + 70) / 70));
};

function sendSpeech(question) {
  const mode = app.mode;
  const body = { audio_base64: question.wavBase64 };
  let images = [];
  if (mode === 'visual_speech') {
    images = app.images.visual_speech.slice(0, 1);
    if (!images.length) {
      showError('Choose a picture first: upload one or take a snapshot with the camera, then ask again.');
      status('Ready.', 'ready');
      return;
    }
    body.image_base64 = images[0].base64;
  } else if (mode === 'multimodal') {
    images = app.images.multimodal.slice();
    body.image_list = images.map((image) => image.base64);
  }
  runTurn(mode, body, { question: null, images });
}

function sendTyped(mode, input, event) {
  event.preventDefault();
  const text = input.value.trim();
  if (!text) {
    status(mode === 'tts' ? 'Type some text first.' : 'Type a message first.');
    input.focus();
    return;
  }
  input.value = '';
  runTurn(mode, { text }, { question: text });
}

// ---- pictures ------------------------------------------------------------------------------------
function thumbsFor(target) {
  return $(target === 'visual_speech' ? 'visual-thumbs' : 'multi-thumbs');
}

function renderThumbs(target) {
  const list = thumbsFor(target);
  list.replaceChildren();
  for (const image of app.images[target]) {
    const li = document.createElement('li');
    const img = document.createElement('img');
    img.src = image.url;
    img.alt = `Picture: ${image.name}`;
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.textContent = 'Remove';
    remove.setAttribute('aria-label', `Remove picture ${image.name}`);
    remove.onclick = () => {
      app.images[target] = app.images[target].filter((i) => i !== image);
      renderThumbs(target);
      status(`Removed ${image.name}.`);
    };
    li.append(img, remove);
    list.append(li);
  }
}

async function addImage(target, blob, name) {
  const limits = (app.info && app.info.limits) || {};
  if (limits.max_image_bytes && blob.size > limits.max_image_bytes) {
    showError(`${name} is ${(blob.size / 1048576).toFixed(1)} MB; this server takes pictures up to ` +
      `${(limits.max_image_bytes / 1048576).toFixed(0)} MB.`);
    return;
  }
  const list = app.images[target];
  if (target === 'multimodal' && limits.max_images && list.length >= limits.max_images) {
    showError(`This server takes up to ${limits.max_images} pictures per question. Remove one first.`);
    return;
  }
  const image = { name, url: URL.createObjectURL(blob), base64: await blobToBase64(blob), bytes: blob.size };
  if (target === 'visual_speech') app.images[target] = [image];
  else list.push(image);
  renderThumbs(target);
  status(`Picture ${name} added.`);
}

async function onFiles(target, input) {
  for (const file of input.files) {
    if (!file.type.startsWith('image/')) {
      showError(`${file.name} is not a picture. Choose an image file (JPEG, PNG, …).`);
      continue;
    }
    await addImage(target, file, file.name);
  }
  input.value = '';
}

function stopCamera() {
  if (app.camera && app.camera.open) app.camera.stop();
  $('camera').hidden = true;
  for (const b of document.querySelectorAll('.camera-toggle')) b.textContent = 'Start camera';
  for (const b of document.querySelectorAll('.camera-snap')) b.hidden = true;
}

async function toggleCamera(target) {
  if (!app.camera) app.camera = new Camera($('camera'));
  if (app.camera.open) {
    stopCamera();
    return;
  }
  try {
    await app.camera.start();
  } catch (error) {
    showError(error.message);
    return;
  }
  $('camera').hidden = false;
  for (const b of document.querySelectorAll(`.camera-toggle[data-target="${target}"]`)) b.textContent = 'Stop camera';
  for (const b of document.querySelectorAll(`.camera-snap[data-target="${target}"]`)) b.hidden = false;
  status('Camera on: press Take snapshot to use the picture.');
}

async function snapshot(target) {
  try {
    const blob = await app.camera.snapshot();
    app.snapshots += 1;
    await addImage(target, blob, `snapshot-${app.snapshots}.jpg`);
  } catch (error) {
    showError(error.message);
  }
}

// ---- level meter and waveform --------------------------------------------------------------------
function drawLoop() {
  const canvas = $('wave');
  const g = canvas.getContext('2d');
  let wave = null;
  const frame = () => {
    if (app.player) {
      if (!wave) wave = new Float32Array(app.player.analyser.fftSize);
      const rms = app.player.level(wave);
      $('out-level').value = Math.min(1, rms * 4);
      const { width, height } = canvas;
      g.clearRect(0, 0, width, height);
      g.strokeStyle = getComputedStyle(canvas).color;
      g.lineWidth = 1.5;
      g.beginPath();
      for (let x = 0; x < width; x++) {
        const y = height / 2 - wave[Math.floor((x / width) * wave.length)] * (height / 2);
        if (x === 0) g.moveTo(x, y);
        else g.lineTo(x, y);
      }
      g.stroke();
    }
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
}

// ---- wiring --------------------------------------------------------------------------------------
function isEditable(target) {
  return target && (target.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(target.tagName));
}

function wire() {
  for (const mode of MODES) $(`tab-${mode}`).addEventListener('click', () => selectMode(mode, false));
  document.querySelector('[role="tablist"]').addEventListener('keydown', onTabKey);
  for (const mode of TYPED) {
    const form = $(`${mode}-form`);
    const input = $(`${mode}-input`);
    form.addEventListener('submit', (event) => sendTyped(mode, input, event));
    input.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
  }
  $('stop').addEventListener('click', stopTurn);
  $('replay').addEventListener('click', replay);
  $('download').addEventListener('click', download);
  $('error-dismiss').addEventListener('click', clearError);

  const talk = $('talk');
  talk.addEventListener('pointerdown', (event) => {
    if (event.button !== 0) return;
    talk.setPointerCapture(event.pointerId);
    pressTalk();
  });
  talk.addEventListener('pointerup', releaseTalk);
  talk.addEventListener('pointercancel', releaseTalk);
  talk.addEventListener('keydown', (event) => {
    if (event.key === ' ' || event.key === 'Enter') {
      event.preventDefault();
      if (!event.repeat) pressTalk();
    }
  });
  talk.addEventListener('keyup', (event) => {
    if (event.key === ' ' || event.key === 'Enter') {
      event.preventDefault();
      releaseTalk();
    }
  });
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && (app.busy || app.turn)) {
      event.preventDefault();
      stopTurn();
      return;
    }
    if ((event.key === 't' || event.key === 'T') && !event.ctrlKey && !event.metaKey && !event.altKey &&
        !isEditable(event.target) && !TYPED.includes(app.mode)) {
      event.preventDefault();
      if (!event.repeat) {
        ptt.byKey = true;
        pressTalk();
      }
    }
  });
  document.addEventListener('keyup', (event) => {
    if ((event.key === 't' || event.key === 'T') && ptt.byKey) {
      ptt.byKey = false;
      releaseTalk();
    }
  });
  $('handsfree').addEventListener('change', toggleHandsFree);
  $('threshold').addEventListener('input', applyListeningSettings);
  $('pause').addEventListener('input', applyListeningSettings);
  $('barge-voice').addEventListener('change', () => setBusy(app.busy));
  $('prompt-default').addEventListener('change', () => {
    const own = !$('prompt-default').checked;
    $('system-prompt').disabled = !own;
    if (!own && app.info) $('system-prompt').value = app.info.system_prompt || '';
  });
  const key = $('api-key');
  key.value = sessionStorage.getItem('llmvox-api-key') || '';
  $('key-form').addEventListener('submit', (event) => event.preventDefault());
  key.addEventListener('change', () => {
    sessionStorage.setItem('llmvox-api-key', key.value.trim());
    connect();
  });
  $('visual-file').addEventListener('change', (event) => onFiles('visual_speech', event.target));
  $('multi-file').addEventListener('change', (event) => onFiles('multimodal', event.target));
  for (const b of document.querySelectorAll('.camera-toggle')) {
    b.addEventListener('click', () => toggleCamera(b.dataset.target));
  }
  for (const b of document.querySelectorAll('.camera-snap')) b.addEventListener('click', () => snapshot(b.dataset.target));
  document.addEventListener('pointerdown', () => app.player && app.player.resume(), { once: true });
  document.addEventListener('keydown', () => app.player && app.player.resume(), { once: true });
}

wire();
applyListeningSettings();
drawLoop();
connect();
