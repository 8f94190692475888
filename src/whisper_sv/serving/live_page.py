"""The page's live microphone mode: a panel that streams the microphone to ``/live`` and shows the words.

The browser does the capture and nothing else: an AudioWorklet turns the microphone into 16-bit
PCM at the audio device's rate and sends a piece every 0.1 s over the same WebSocket that programs
use (live.py says the protocol), so the page and the API are one code path with one set of limits
(the session cap, the session length, frame sizes, the idle timeout). The panel shows committed
words as plain text and the tentative rest in grey italics; committed text only grows.

With "Continue at pauses" on, each utterance that closes at a pause sends the committed text (its
last `CONTINUE_CHARS` characters) with the page's Length and Temperature to the app's
``/continue`` endpoint through Gradio's queue, the same way the button does, one request at a
time: a pause while one runs waits for it, and only the newest text is sent next.

Why not Gradio's streaming microphone (``gr.Audio(streaming=True)``): it sends each piece as a
queued event with a file, and its state lives in the queue's session, so the live sessions' cap,
their decode pool and the client-gone cleanup would be a second implementation beside the
WebSocket's. A WebSocket works in a browser and in a Space alike (the page derives ``ws://`` or
``wss://`` from its own address).
"""

from __future__ import annotations

CONTINUE_CHARS = 1000  # the tail of the transcript that goes to the language model at a pause

TEMPLATE = """
<div class="wsv-live">
  <div class="wsv-live-bar">
    <button type="button" id="live-start" class="wsv-live-btn">&#9679; Live</button>
    <button type="button" id="live-stop" class="wsv-live-btn" disabled>&#9632; Stop</button>
    <label class="wsv-live-toggle"><input type="checkbox" id="live-continue"> Continue at pauses</label>
  </div>
  <p id="live-status">Live: speak and read the words as you say them (grey words may still change).</p>
  <p id="live-text"><span id="live-committed"></span> <span id="live-tentative"></span></p>
  <p id="live-continuation"></p>
</div>
"""

CSS = """
.wsv-live { border: 1px solid var(--border-color-primary); border-radius: var(--radius-lg); padding: 10px 12px; }
.wsv-live-bar { display: flex; gap: 10px; align-items: center; flex-wrap: wrap; }
.wsv-live-btn { padding: 4px 14px; border-radius: var(--radius-md); border: 1px solid var(--border-color-primary);
  background: var(--button-secondary-background-fill); color: var(--button-secondary-text-color); cursor: pointer; }
.wsv-live-btn:disabled { opacity: 0.5; cursor: default; }
#live-status { color: var(--body-text-color-subdued); font-size: 0.9em; margin: 6px 0; }
#live-text { min-height: 2.5em; margin: 4px 0; }
#live-tentative { color: var(--body-text-color-subdued); font-style: italic; }
#live-continuation { color: var(--color-accent); margin: 4px 0; }
"""

# Runs once when the panel is mounted (Gradio's `js_on_load`: `element` is the panel).
SCRIPT = r"""
const $ = (id) => element.querySelector('#' + id);
const startBtn = $('live-start'), stopBtn = $('live-stop'), statusEl = $('live-status');
const committedEl = $('live-committed'), tentativeEl = $('live-tentative');
const contEl = $('live-continuation'), toggle = $('live-continue');
const root = new URL(((window.gradio_config && window.gradio_config.root) || window.location.href).replace(/\/?$/, '/'));
const CONTINUE_CHARS = __CONTINUE_CHARS__;
// The microphone as 16-bit PCM, a piece every 0.1 s, at the device's own rate (the server resamples).
const WORKLET = `class Pcm16 extends AudioWorkletProcessor {
  constructor() { super(); this.parts = []; this.n = 0; }
  process(inputs) {
    const x = inputs[0] && inputs[0][0];
    if (x) {
      this.parts.push(Float32Array.from(x)); this.n += x.length;
      if (this.n >= sampleRate / 10) {
        const out = new Int16Array(this.n); let i = 0;
        for (const p of this.parts) for (const v of p) out[i++] = Math.max(-32768, Math.min(32767, Math.round(v * 32767)));
        this.port.postMessage(out.buffer, [out.buffer]); this.parts = []; this.n = 0;
      }
    }
    return true;
  }
}
registerProcessor('pcm16', Pcm16);`;
let ws = null, ctx = null, stream = null, node = null, finished = false, told = false;

function say(text) { statusEl.textContent = text; }

function releaseMicrophone() {
  if (node) { node.port.onmessage = null; node.disconnect(); node = null; }
  if (stream) { stream.getTracks().forEach((t) => t.stop()); stream = null; }
  if (ctx) { ctx.close(); ctx = null; }
}

function ended() {
  releaseMicrophone();
  ws = null;
  startBtn.disabled = false; stopBtn.disabled = true;
}

async function start() {
  startBtn.disabled = true; finished = false; told = false;
  committedEl.textContent = ''; tentativeEl.textContent = ''; contEl.textContent = '';
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    say('Live needs the microphone: open the page over https (or on localhost) in a current browser.');
    startBtn.disabled = false; return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({audio: {channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
    ctx = new AudioContext();
    const url = URL.createObjectURL(new Blob([WORKLET], {type: 'application/javascript'}));
    await ctx.audioWorklet.addModule(url);
    URL.revokeObjectURL(url);
  } catch (err) {
    say('No microphone: ' + err.message + '. Allow the microphone for this page, or upload a recording.');
    ended(); return;
  }
  const address = new URL('live', root);
  address.protocol = address.protocol === 'https:' ? 'wss:' : 'ws:';
  ws = new WebSocket(address.href);
  ws.binaryType = 'arraybuffer';
  const socket = ws;
  ws.onopen = () => {
    socket.send(JSON.stringify({sample_rate: ctx.sampleRate}));
    node = new AudioWorkletNode(ctx, 'pcm16');
    node.port.onmessage = (e) => { if (socket.readyState === WebSocket.OPEN) socket.send(e.data); };
    ctx.createMediaStreamSource(stream).connect(node);
    say('Listening: speak now.');
    stopBtn.disabled = false;
  };
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.error) { told = true; say(m.error); return; }
    committedEl.textContent = m.committed;
    tentativeEl.textContent = m.tentative || '';
    if (m.utterance_end && m.new && toggle.checked) continueText(m.committed);
    if (m.final) {
      finished = true;
      releaseMicrophone();
      say(m.committed ? 'Done.' : 'Done: no speech was heard.');
    }
  };
  ws.onclose = (e) => {
    if (!finished && !told) say('The connection closed (' + e.code + '): start again.');
    ended();
  };
}

function stop() {
  stopBtn.disabled = true;
  releaseMicrophone();
  if (ws && ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify({end: true})); say('Finishing the last words…'); }
}

// "Continue at pauses": one request at a time through the app's /continue endpoint (Gradio's queue).
let busy = false, next = null;
async function continueText(text) {
  if (busy) { next = text; return; }
  busy = true;
  contEl.textContent = '…';
  try {
    contEl.textContent = await callContinue(text.slice(-CONTINUE_CHARS).replace(/^\S*\s/, ''));
  } catch (err) {
    contEl.textContent = 'No continuation: ' + err.message;
  }
  busy = false;
  if (next !== null) { const t = next; next = null; continueText(t); }
}

// The page's Length and Temperature sliders, as the "Continue the text" button uses them.
function setting(id, fallback) {
  const box = document.querySelector('#' + id + ' input[type=number]');
  const value = box ? parseFloat(box.value) : NaN;
  return Number.isFinite(value) ? value : fallback;
}

async function callContinue(text) {
  const inputs = [text, setting('lm-length', 40), setting('lm-temperature', 0.8)];
  const posted = await fetch(new URL('gradio_api/call/continue', root), {
    method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify({data: inputs}),
  });
  if (!posted.ok) throw new Error('HTTP ' + posted.status);
  const {event_id} = await posted.json();
  const body = await (await fetch(new URL('gradio_api/call/continue/' + event_id, root))).text();
  let event = null, data = null;
  for (const line of body.split('\n')) {
    if (line.startsWith('event:')) event = line.slice(6).trim();
    else if (line.startsWith('data:')) data = line.slice(5).trim();
  }
  if (event === 'complete') return JSON.parse(data)[0];
  const reason = data && data !== 'null' ? JSON.parse(data) : null;
  throw new Error(typeof reason === 'string' ? reason : 'the server refused');
}

startBtn.addEventListener('click', start);
stopBtn.addEventListener('click', stop);
""".replace("__CONTINUE_CHARS__", str(CONTINUE_CHARS))


def live_panel(gr):
    """The live microphone panel (a `gr.HTML` whose script runs in the browser)."""
    return gr.HTML(value="", html_template=TEMPLATE, css_template=CSS, js_on_load=SCRIPT, elem_id="live",
                   apply_default_css=True)
