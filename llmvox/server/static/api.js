// Talking to the llmvox server (or to run_ui.py, which forwards every call to one).
// URLs are relative to the page, so the same files work from the server itself and from the proxy.

export class ApiError extends Error {
  /** `message` is already in plain words; `status`/`code` say what the server (or the network) said. */
  constructor(message, { status = 0, code = 'error', detail = '' } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

export function apiUrl(path) {
  return new URL(path.replace(/^\//, ''), document.baseURI).toString();
}

function headers(apiKey, json = false) {
  const h = {};
  if (json) h['Content-Type'] = 'application/json';
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

function serverName() {
  return window.location.host || 'this address';
}

/** A network failure (nothing answered) in plain words. */
export function unreachable(error) {
  return new ApiError(
    `Can't reach the llmvox server at ${serverName()}. Check that it is running and that the address is right, ` +
    'then try again.', { code: 'unreachable', detail: String(error && error.message || error) });
}

/** An HTTP error answer in plain words, from the JSON error body the server (or the proxy) sends. */
export async function errorFromResponse(response) {
  let message = '';
  let code = `http_${response.status}`;
  let upstream = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || '';
      code = body.error.code || code;
      upstream = body.error.upstream || null;
    }
  } catch (_) {
    message = response.statusText || '';
  }
  return new ApiError(explainHttp(response.status, code, message, upstream),
    { status: response.status, code, detail: message });
}

function sentence(text) {
  const t = (text || '').trim();
  if (!t) return '';
  const first = t.charAt(0).toUpperCase() + t.slice(1);
  return /[.!?]$/.test(first) ? first : `${first}.`;
}

export function explainHttp(status, code, message, upstream = null) {
  const said = sentence(message);
  const server = upstream ? `the llmvox server at ${upstream}` : 'the llmvox server';
  if (code === 'upstream_unreachable') {
    return `The UI is running, but it can't reach ${server}. Check that the server is running and that ` +
      'run_ui.py was given the right --ip and --port, then press Try again.';
  }
  if (code === 'upstream_timeout') return `${sentence(server)} did not answer in time. Try again in a moment.`;
  if (status === 401) return `This server needs an API key. Enter it under Settings, then try again. (${said})`;
  if (status === 409) return `This server can't do that. ${said}`;
  if (status === 413) return `That was too big for the server. ${said}`;
  if (status === 422 && code === 'no_speech') {
    return "I couldn't hear any words in that recording. Try again, a little louder or closer to the microphone. " +
      `(${said})`;
  }
  if (status === 429 || status === 503) return `The server is busy right now. Wait a moment and try again. (${said})`;
  if (status === 404) return `The server doesn't know this request: is it an llmvox server? (${said})`;
  if (status >= 500) return `The server had a problem answering. ${said}`;
  return `The server could not use this request. ${said}`;
}

async function request(path, { method = 'GET', body, apiKey, signal } = {}) {
  let response;
  try {
    response = await fetch(apiUrl(path), {
      method, signal, headers: headers(apiKey, body !== undefined), cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw unreachable(error);
  }
  if (!response.ok) throw await errorFromResponse(response);
  return response;
}

/** GET /v1/info: chat modes, voice, models, limits (see llmvox/server/ui.py). */
export async function getInfo(apiKey) {
  const response = await request('v1/info', { apiKey });
  const info = await response.json();
  info.proxyUpstream = response.headers.get('X-LLMVoX-Proxy-Upstream');
  return info;
}

/**
 * Start a chat turn. Resolves once the answer starts (headers in): `{response, requestId, question}`;
 * read `response.body` for the float32 24 kHz audio. Errors before the audio are ApiErrors in plain words.
 */
export async function startChat(path, body, { apiKey, signal }) {
  const response = await request(path, { method: 'POST', body, apiKey, signal });
  const rawQuestion = response.headers.get('X-LLMVoX-Question');
  let question = null;
  if (rawQuestion) {
    try { question = decodeURIComponent(rawQuestion); } catch (_) { question = rawQuestion; }
  }
  return { response, requestId: response.headers.get('X-LLMVoX-Request-Id'), question };
}

/** GET /v1/transcripts/{id}: the question and the answer text so far (`wait` s: until the answer is done). */
export async function getTranscript(requestId, { wait = 0, apiKey, signal } = {}) {
  const response = await request(`v1/transcripts/${encodeURIComponent(requestId)}?wait=${wait}`, { apiKey, signal });
  return response.json();
}

/**
 * Float32 little-endian samples from a byte stream whose pieces need not end on a sample boundary.
 * `push(bytes)` returns the whole samples available so far; the odd 1-3 bytes wait for the next piece.
 */
export class Float32Reader {
  constructor() {
    this.rest = new Uint8Array(0);
  }

  push(bytes) {
    let data = bytes;
    if (this.rest.length) {
      data = new Uint8Array(this.rest.length + bytes.length);
      data.set(this.rest, 0);
      data.set(bytes, this.rest.length);
    }
    const usable = data.length - (data.length % 4);
    this.rest = data.slice(usable);
    const view = new DataView(data.buffer, data.byteOffset, usable);
    const out = new Float32Array(usable / 4);
    for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true);
    return out;
  }

  get leftover() {
    return this.rest.length;
  }
}
