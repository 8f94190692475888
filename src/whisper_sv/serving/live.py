"""Live transcription: words while the user speaks, committed once they are stable, never rewritten.

A session keeps the audio of the utterance in progress (the buffer) and decodes it on the app's
backend (CTranslate2, the encoder window fitted to the buffer) every `LiveConfig.step_s` of new
audio. What it shows:

* **committed** text, by LocalAgreement-2 (ufal/whisper_streaming): a word is committed once two
  consecutive decodes of the growing buffer agree on it and on every word before it. Once
  committed, a word is never taken back; later decodes only add after it.
* **tentative** text: what the latest decode says beyond the committed words. It may change.
* **at a pause** (the buffer ends in `pause_ms` or more without speech, by Silero VAD), the
  utterance is decoded once more and committed whole, and the buffer starts again after it. So
  the commit lag is bounded by the pause rule even where two decodes never agree. A buffer that
  reaches `max_buffer_s` without a pause is committed whole the same way.
* **the closing decode hears what came before**: the closed utterances that fit `context_s`, their
  audio in front of the utterance's and their committed words forced as the decoder's prefix
  (CTranslate2 backend). Decoded alone, each utterance loses the context an offline decode of a
  30 s chunk has; that cost 9 % relative WER against offline on the bench's recordings. Only the
  closing decode: forced words cost the decoder a step each, and context in every step decode
  was both slower and worse (docs/benchmarks.md). A decode that loops on the context (Whisper's
  known failure when conditioned on earlier text) is dropped with it.
* **between steps**, at every piece of audio: an utterance's first decode runs once
  `first_decode_s` of its speech has arrived (shown, not agreed with: half a second of speech is
  mostly guessed), and with `early_close` a pause closes the utterance as soon as it is heard (a
  Silero check of the buffer's last `pause_ms` only, under a millisecond) rather than at the next
  step. Both cut latency; the early close also splits a sentence at a pause inside it, which costs
  the decoder context (docs/benchmarks.md has both sides).

Why this policy: LocalAgreement is what whisper_streaming measured at about 3.3 s latency on
unsegmented speech, and it needs nothing from the model but its text (our decode loop has no
timestamps). Cutting the buffer at pauses, which people make every few seconds, keeps each decode
short (a 15 s window at most on a 2-core CPU) and gives every utterance a final decode on all of
its audio, which is what makes live text match the offline transcript.

A session is bounded: `max_session_s` of audio in all (then it finishes), a buffer of at most
`max_buffer_s`, and `LiveSessions` caps how many run at once (one more is refused with a message).
A session holds only numbers in memory: nothing on disk, no thread of its own.
"""

from __future__ import annotations

import difflib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..audio.io import SAMPLE_RATE
from ..common.metrics import normalize_text
from ..common.options import option
from ..models.decoding import MAX_COMPRESSION_RATIO, compression_ratio
from .scheduler import join_threads


@dataclass(frozen=True)
class LiveConfig:
    """How a live session decodes and how much it may hold."""

    step_s: float = option(1.0, "decode the utterance in progress every this many seconds of new audio")
    first_decode_s: float = option(0.5, "an utterance's first decode runs once this much of its speech has arrived, s")
    early_close: bool = option(True, "close an utterance as soon as a pause is heard, not at the next decode step")
    context_s: float = option(10.0, (
        "an utterance's closing decode hears up to this much audio: the utterance and, in front of "
        "it, the closed utterances that fit, their committed words forced as the decoder's first "
        "words (offline decoding hears what came before in its 30 s chunk; an utterance decoded "
        "alone loses that). 0: each utterance alone"
    ))
    pause_ms: int = option(300, "non-speech at the end of the buffer that closes an utterance (committed whole), ms")
    max_buffer_s: float = option(15.0, "an utterance without a pause is committed whole at this length, s")
    max_session_s: float = option(600.0, "a session ends after this much audio, s")
    max_sessions: int = option(2, "live sessions at once; one more is refused with a message")
    vad_threshold: float = option(0.5, "Silero speech probability above which a frame is speech")

    def __post_init__(self):
        if not 0.2 <= self.step_s <= 5:
            raise ValueError(f"step_s={self.step_s}: use 0.2 to 5 s")
        if not 0.1 <= self.first_decode_s <= self.step_s:
            raise ValueError(f"first_decode_s={self.first_decode_s}: use 0.1 s up to step_s")
        if not 0 <= self.context_s <= 28:
            raise ValueError(f"context_s={self.context_s}: use 0 to 28 s (one Whisper window, with room)")
        if not 100 <= self.pause_ms <= 3000:
            raise ValueError(f"pause_ms={self.pause_ms}: use 100 to 3000 ms")
        if not 2 <= self.max_buffer_s <= 28:
            raise ValueError(f"max_buffer_s={self.max_buffer_s}: use 2 to 28 s (one Whisper window, with room)")
        if self.max_session_s <= 0 or self.max_sessions < 1:
            raise ValueError("max_session_s must be positive and max_sessions at least 1")


@dataclass
class Update:
    """What a session says after a piece of audio: all committed text, what this update committed,
    and the tentative rest of the utterance in progress."""

    committed: str
    new: str = ""
    tentative: str = ""
    utterance_end: bool = False  # an utterance was closed (a pause, max_buffer_s or the end): what the page may continue
    final: bool = False  # the session has ended (finish(), or max_session_s reached)


def _words(text: str) -> list[str]:
    return text.split()


def _same(a: list[str], b: list[str]) -> bool:
    return [normalize_text(w) for w in a] == [normalize_text(w) for w in b]


def agreed_prefix(previous: list[str], current: list[str]) -> int:
    """How many leading words two decodes share (compared normalised: case and punctuation aside)."""
    n = 0
    for a, b in zip(previous, current):
        if normalize_text(a) != normalize_text(b):
            break
        n += 1
    return n


def continuation(committed: list[str], hypothesis: list[str]) -> list[str]:
    """The words of `hypothesis` after the part that `committed` (this utterance's committed words)
    already says. Usually `hypothesis` starts with them; where a later decode reworded the
    committed part, the rest starts after the last committed word found in it (difflib)."""
    if not committed:
        return hypothesis
    if _same(hypothesis[: len(committed)], committed):
        return hypothesis[len(committed) :]
    a = [normalize_text(w) for w in committed]
    b = [normalize_text(w) for w in hypothesis]
    blocks = [m for m in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks() if m.size]
    if not blocks:
        return hypothesis[len(committed) :]  # nothing in common: keep the count, never repeat words
    last = blocks[-1]
    return hypothesis[last.b + last.size + (len(a) - (last.a + last.size)) :]


class LiveSession:
    """One speaker's stream: `feed` 16 kHz mono float32 audio as it arrives, read `Update`s."""

    def __init__(self, backend, cfg: LiveConfig = LiveConfig()):
        self.backend, self.cfg = backend, cfg
        self.buffer = np.zeros(0, dtype=np.float32)  # the utterance in progress (and any silence before it)
        self.committed: list[str] = []  # all committed words of the session
        self.utterance: list[str] = []  # the committed words of the utterance in progress
        self.previous: list[str] = []  # the last decode of the buffer, for LocalAgreement
        self.tentative: list[str] = []
        self.context: list[tuple[np.ndarray, list[str]]] = []  # closed utterances the decoder still hears: (audio, words)
        self._takes_prefix = _takes_prefix(backend)  # whether closing decodes can hear the context
        self.received_s = 0.0  # audio fed so far
        self.decode_s = 0.0  # time spent decoding (for the real-time factor)
        self.decodes = 0
        self.final = False
        self._since_decode = 0
        self._speaking = False  # the last look found speech in the utterance in progress

    # -- the stream -------------------------------------------------------------------------------

    def feed(self, samples: np.ndarray) -> Update | None:
        """Add audio; returns an Update when a decode ran (every `step_s` of new audio), else None."""
        if self.final:
            return Update(" ".join(self.committed), final=True)
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        room = int((self.cfg.max_session_s - self.received_s) * SAMPLE_RATE)
        samples = samples[: max(room, 0)]
        self.received_s += len(samples) / SAMPLE_RATE
        self.buffer = np.concatenate([self.buffer, samples])
        self._since_decode += len(samples)
        if self.received_s >= self.cfg.max_session_s:
            return self.finish()
        if self._since_decode >= self.cfg.step_s * SAMPLE_RATE or len(self.buffer) >= self.cfg.max_buffer_s * SAMPLE_RATE:
            self._since_decode = 0
            return self._step()
        # Between steps, at every piece: a pause closes the utterance now, not at the next step, and
        # the first words of an utterance show once `first_decode_s` of it has arrived.
        if self._speaking:
            update = self._step(only_close=True) if self.cfg.early_close and self._tail_is_quiet() else None
        else:
            update = self._step(first=True) if self._speech_started() else None
        if update is not None:
            self._since_decode = 0
        return update

    def finish(self) -> Update:
        """End the session: the utterance in progress is decoded once more and committed."""
        if self.final:
            return Update(" ".join(self.committed), final=True)
        new = self._close_utterance(len(self.buffer)) if self._speech_spans() else []
        self.final = True
        self.buffer = np.zeros(0, dtype=np.float32)
        return Update(" ".join(self.committed), " ".join(new), "", utterance_end=bool(new), final=True)

    # -- one step ---------------------------------------------------------------------------------

    def _step(self, only_close: bool = False, first: bool = False) -> Update | None:
        """Look at the buffer: close the utterance at a pause (or at `max_buffer_s`), else decode it
        and commit what two decodes agree on; with `only_close`, return None instead of decoding.
        A `first` decode (half a second of speech) is shown but not agreed with: its words are
        mostly guesses, and a guess the next decode happens to repeat would be committed."""
        spans = self._speech_spans()
        if not spans:  # no speech yet: keep only a little of the silence (a word may be starting)
            self.buffer = self.buffer[-int(0.5 * SAMPLE_RATE) :]
            self.tentative, self._speaking = [], False
            return Update(" ".join(self.committed))
        speech_end = spans[-1]["end"]
        paused = len(self.buffer) - speech_end >= self.cfg.pause_ms * SAMPLE_RATE / 1000
        if paused or len(self.buffer) >= self.cfg.max_buffer_s * SAMPLE_RATE:
            new = self._close_utterance(speech_end if paused else len(self.buffer))
            return Update(" ".join(self.committed), " ".join(new), utterance_end=True)
        self._speaking = True
        if only_close:
            return None
        hypothesis = _words(self._decode(self.buffer))
        agreed = agreed_prefix(self.previous, hypothesis)
        new: list[str] = []
        if agreed > len(self.utterance) and _same(hypothesis[: len(self.utterance)], self.utterance):
            new = hypothesis[len(self.utterance) : agreed]
            self.utterance += new
            self.committed += new
        self.previous = [] if first else hypothesis
        self.tentative = continuation(self.utterance, hypothesis)
        return Update(" ".join(self.committed), " ".join(new), " ".join(self.tentative))

    def _close_utterance(self, end: int) -> list[str]:
        """Decode the buffer up to `end` once more, commit what it says beyond the committed words,
        and start the next utterance after it."""
        pad = int(0.2 * SAMPLE_RATE)  # the VAD's own padding: word edges are not clipped
        hypothesis = _words(self._decode(self.buffer[: min(len(self.buffer), end + pad)], context=True))
        new = continuation(self.utterance, hypothesis)
        self.committed += new
        self._remember(self.buffer[:end], self.utterance + new)
        self.buffer = self.buffer[end:]
        self.utterance, self.previous, self.tentative = [], [], []
        self._speaking = False
        return new

    def _remember(self, audio: np.ndarray, words: list[str]) -> None:
        """Keep a closed utterance as context, and as many of the latest ones as fit `context_s`
        (whole utterances: their words must match their audio)."""
        if not self.cfg.context_s:
            return
        self.context.append((audio, words))
        while self.context and sum(len(a) for a, _ in self.context) > self.cfg.context_s * SAMPLE_RATE:
            self.context.pop(0)

    def _context_for(self, audio: np.ndarray) -> list[tuple[np.ndarray, list[str]]]:
        """The latest closed utterances that fit in front of `audio` within `context_s`."""
        room, kept = self.cfg.context_s * SAMPLE_RATE - len(audio), []
        for piece in reversed(self.context):
            room -= len(piece[0])
            if room < 0:
                break
            kept.insert(0, piece)
        return kept

    def _decode(self, audio: np.ndarray, context: bool = False) -> str:
        """The text of `audio` (the utterance in progress). With `context` (an utterance's closing
        decode), decoded after the closed utterances that fit `context_s`: their audio in front of
        it and their committed words forced as the decoder's prefix, so what comes back is what
        follows them. A context can start a loop (Whisper's known failure when it is conditioned on
        earlier text): a decode that repeats three words in a row of the context, compresses like
        a loop with it, or says more than the utterance's length could hold is dropped, with the
        context, and the utterance decoded alone."""
        started = time.perf_counter()
        kept = self._context_for(audio) if context and len(audio) and self._takes_prefix else []
        words = [w for _, ws in kept for w in ws]
        text = ""
        if words:
            text = self.backend.decode([np.concatenate([a for a, _ in kept] + [audio])], prefix=" ".join(words))[0]
            if _looks_like_a_loop(words, _words(text), len(audio) / SAMPLE_RATE):
                self.context, words = [], []
        if not words:
            text = self.backend.decode([audio])[0] if len(audio) else ""
        self.decode_s += time.perf_counter() - started
        self.decodes += 1
        return text

    def _tail_is_quiet(self) -> bool:
        """Whether the last `pause_ms` (and a window more) of the buffer hold no speech: Silero on
        that tail alone, under 1 ms, so it can run at every piece."""
        from faster_whisper.vad import get_vad_model

        window = 512  # Silero's frame at 16 kHz
        n = (int(self.cfg.pause_ms * SAMPLE_RATE / 1000) // window + 2) * window
        if len(self.buffer) < n:
            return False
        probabilities = get_vad_model()(self.buffer[-n:])
        return float(np.max(probabilities)) < self.cfg.vad_threshold - 0.15  # Silero's own end-of-speech threshold

    def _speech_started(self) -> bool:
        """Whether `first_decode_s` of speech has arrived since the buffer's speech began (the buffer
        is short here: at most half a second of silence and what came since)."""
        spans = self._speech_spans()
        return bool(spans) and len(self.buffer) - spans[0]["start"] >= self.cfg.first_decode_s * SAMPLE_RATE

    def _speech_spans(self) -> list[dict]:
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        if not len(self.buffer):
            return []
        vad = VadOptions(threshold=self.cfg.vad_threshold, min_silence_duration_ms=self.cfg.pause_ms, speech_pad_ms=0)
        return get_speech_timestamps(self.buffer, vad, sampling_rate=SAMPLE_RATE)


MAX_CHARS_PER_S = 30  # fast read speech is ~15 characters a second; twice that is not speech


def _looks_like_a_loop(context: list[str], new: list[str], seconds: float, n: int = 3) -> bool:
    """Whether `new`, decoded after `context` for `seconds` of audio, is a loop the context
    started: `n` words in a row that the context also says (compared normalised), a compression
    ratio of the two together above `MAX_COMPRESSION_RATIO`, or more characters than
    `seconds` of speech holds."""
    said = [normalize_text(w) for w in context]
    grams = {tuple(said[i : i + n]) for i in range(len(said) - n + 1)}
    heard = [normalize_text(w) for w in new]
    if any(tuple(heard[i : i + n]) in grams for i in range(len(heard) - n + 1)):
        return True
    text = " ".join(new)
    return compression_ratio(" ".join(context + new)) > MAX_COMPRESSION_RATIO or len(text) > MAX_CHARS_PER_S * seconds + 20


def _takes_prefix(backend) -> bool:
    """Whether `backend.decode` takes a forced `prefix` (the CTranslate2 backend does)."""
    import inspect

    try:
        return "prefix" in inspect.signature(backend.decode).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class LiveSessions:
    """The live sessions running now, at most `cfg.max_sessions`; one more is refused."""

    cfg: LiveConfig = field(default_factory=LiveConfig)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _open: set = field(default_factory=set)
    executor: ThreadPoolExecutor = field(init=False)

    def __post_init__(self):
        # The sessions' decodes run here, one thread per session at most: a fixed, named pool, so
        # a session (or a client that vanished) never leaves a thread of its own behind.
        self.executor = ThreadPoolExecutor(max_workers=self.cfg.max_sessions, thread_name_prefix="live-decode")

    def open(self, backend) -> LiveSession:
        with self._lock:
            if len(self._open) >= self.cfg.max_sessions:
                raise SessionsFull(f"{len(self._open)} live sessions are running, the most this server takes; "
                                   "try again in a minute, or upload a recording instead")
            session = LiveSession(backend, self.cfg)
            self._open.add(id(session))
            return session

    def close(self, session: LiveSession) -> None:
        with self._lock:
            self._open.discard(id(session))

    def shutdown(self, wait_s: float = 0.0) -> bool:
        """Stop the decode threads (the app closes): decodes in progress finish, new ones are refused.

        Waits up to `wait_s` seconds for those decodes; returns whether every decode thread has
        stopped. A process that exits while a thread is inside the backend's decode can die in native
        code ("terminate called without an active exception") instead of exiting cleanly."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        return join_threads(self.executor._threads, wait_s)  # the pool's own workers (no public handle on them)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._open)


class SessionsFull(Exception):
    """One live session more than `LiveConfig.max_sessions`; the message is for the user."""


# ---------------------------------------------------------------------------------------------
# The WebSocket API: ws://HOST:PORT/live
# ---------------------------------------------------------------------------------------------

MAX_FRAME_BYTES = 256 << 10  # one binary message: 2.7 s of 48 kHz int16, far more than a client sends at once
RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000)  # sample rates a client may send (a browser's AudioContext uses its device's)
PIECE_S = 0.1  # audio that arrived at once is fed to the session in pieces this long, as a live client sends it,
#   so what the session does (first words, a pause heard) does not depend on how a client batches its frames
IDLE_S = 15.0  # a session that receives nothing for this long is finished and closed


def live_endpoint(sessions: LiveSessions, backend):
    """The ``/live`` WebSocket handler (Starlette). The protocol, for programs:

    1. optionally a text message ``{"sample_rate": 48000}`` (default 16000; mono);
    2. binary messages of 16-bit little-endian PCM, as the audio arrives (at most `MAX_FRAME_BYTES` each);
    3. the text message ``{"end": true}`` when the audio ends.

    After each decode the server sends ``{"committed", "new", "tentative", "final"}`` (JSON text);
    the last message has ``"final": true`` and the full committed transcript, then the server
    closes. An error is ``{"error": "..."}`` and a close: too many sessions (code 1013, try again),
    a bad message (1003), a frame too big (1009). A session is bounded by `LiveConfig`
    (`max_session_s` of audio, `max_buffer_s`), and by `IDLE_S` without a message; a client that
    disappears leaves nothing behind (its session is dropped and its place freed).
    """
    import asyncio

    from starlette.websockets import WebSocketDisconnect

    async def endpoint(websocket) -> None:
        loop = asyncio.get_running_loop()
        await websocket.accept()
        try:
            session = sessions.open(backend)
        except SessionsFull as err:
            await _refuse(websocket, 1013, str(err))
            return
        # One task reads the socket all the time (so pings and a close are seen even while a decode
        # runs) into `pending`; this one decodes a step at a time. `pending` is bounded by the
        # session's own limit on audio.
        pending: list[np.ndarray] = []
        state = {"rate": SAMPLE_RATE, "samples": 0, "done": False, "gone": False, "refused": None}
        wake = asyncio.Event()
        limit = int(sessions.cfg.max_session_s * SAMPLE_RATE)

        async def read() -> None:
            try:
                while state["samples"] < limit:
                    try:
                        message = await asyncio.wait_for(websocket.receive(), IDLE_S)
                    except asyncio.TimeoutError:
                        return  # idle: finish what was said and close
                    if message["type"] == "websocket.disconnect":
                        state["gone"] = True
                        return
                    refused = _control(message, state) if message.get("text") is not None else _audio(message, state, pending)
                    if refused or state["done"]:
                        state["refused"] = refused
                        return
                    wake.set()
            finally:
                state["done"] = True
                wake.set()

        reader = asyncio.create_task(read())
        step = int(PIECE_S * SAMPLE_RATE)
        try:
            while True:
                await wake.wait()
                wake.clear()
                while pending and not state["gone"] and not session.final:
                    audio = np.concatenate(pending)  # what arrived so far, joined once and walked a piece at a time
                    pending.clear()
                    # Whole pieces only, on one grid from the stream's start; the rest waits for more
                    # audio (or the end), so how a client batches its frames changes nothing.
                    whole = len(audio) if state["done"] else len(audio) // step * step
                    if whole < len(audio):
                        pending.append(audio[whole:])
                    if not whole:
                        break
                    for start in range(0, whole, step):
                        update = await loop.run_in_executor(sessions.executor, session.feed, audio[start : min(start + step, whole)])
                        if state["gone"]:
                            break
                        if update is not None:
                            await websocket.send_json(vars(update))
                            if update.final:
                                state["done"] = True
                                pending.clear()
                                break
                if state["gone"]:
                    return
                if state["refused"]:
                    await _refuse(websocket, *state["refused"])
                    return
                if state["done"] and not pending:
                    break
            update = await loop.run_in_executor(sessions.executor, session.finish)
            await websocket.send_json(vars(update))
            await websocket.close()
        except (WebSocketDisconnect, RuntimeError):  # the client left while we answered
            return
        finally:
            reader.cancel()
            sessions.close(session)

    return endpoint


def _control(message: dict, state: dict) -> tuple[int, str] | None:
    """A text message: ``{"sample_rate": N}`` or ``{"end": true}``; (close code, reason) when it is neither."""
    import json

    try:
        control = json.loads(message["text"])
    except ValueError:
        control = None
    if not isinstance(control, dict) or not ({"end", "sample_rate"} & set(control)):
        return 1003, 'send {"sample_rate": N}, then binary 16-bit PCM, then {"end": true}'
    if "sample_rate" in control:
        if control["sample_rate"] not in RATES:
            return 1003, f"sample_rate must be one of {RATES}"
        if state["samples"] and control["sample_rate"] != state["rate"]:
            return 1003, "send sample_rate before the audio"
        state["rate"] = int(control["sample_rate"])
    if control.get("end"):
        state["done"] = True
    return None


def _audio(message: dict, state: dict, pending: list) -> tuple[int, str] | None:
    """A binary message: 16-bit PCM at the session's rate, resampled to 16 kHz into `pending`."""
    import soxr

    data = message.get("bytes") or b""
    if len(data) > MAX_FRAME_BYTES or len(data) % 2:
        return 1009, f"send 16-bit PCM in pieces of at most {MAX_FRAME_BYTES} bytes"
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if state["rate"] != SAMPLE_RATE and len(samples):
        # One resampler per stream, so the pieces join without a click at every boundary (a browser
        # sends a piece every 0.1 s); the filter holds back the stream's last ~20 ms, which is after the speech.
        if state.get("resampler") is None:
            state["resampler"] = soxr.ResampleStream(state["rate"], SAMPLE_RATE, 1, dtype="float32")
        samples = state["resampler"].resample_chunk(samples)
    pending.append(samples)
    state["samples"] += len(samples)
    return None


async def _refuse(websocket, code: int, message: str) -> None:
    await websocket.send_json({"error": message})
    await websocket.close(code=code)
