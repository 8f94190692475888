"""The app's fair queue: one decode thread takes one VAD chunk at a time from the request with the
least audio decoded so far, so a short clip waits for at most one chunk of a long one; per-client
and total caps on queued audio refuse the rest (`Refused`)."""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

from ..audio.io import SAMPLE_RATE
from .inference import NO_SPEECH, Transcriber, join_texts

log = logging.getLogger(__name__)


class Refused(Exception):
    """A request the scheduler turns away; its message is the one line the client reads."""


@dataclass(eq=False)
class _Job:
    client: str
    seconds: float  # the request's audio: what it holds of its client's and the server's allowance
    seq: int  # arrival order
    future: Future
    chunks: list = field(default_factory=list)  # speech chunks; [audio] for a backend without chunks()
    texts: list[str] = field(default_factory=list)  # one per chunk decoded so far
    done_s: float = 0.0  # audio decoded so far: the scheduling key
    running: bool = False
    released: bool = False  # its audio no longer counts against the allowances


class FairScheduler:
    """Transcription requests share the decoder chunk by chunk, least-served first.

    `submit` splits a request's audio into its speech chunks (the backend's ``chunks``: VAD, at most
    30 s each) and queues it; `workers` threads then decode one chunk at a time (``decode``), always
    from the queued request with the least audio decoded so far, the shorter request on a tie, the
    earlier on a second tie. A new request has had nothing decoded, so it goes next once a chunk in
    progress ends: a clip of one chunk waits for at most one chunk of other audio per worker, never
    for a long upload to finish, and long uploads take turns. Each request's chunks are decoded in
    order, one at a time. A backend without ``chunks`` and ``decode`` (the `Transcriber` protocol
    alone) is one step per request, its ``transcribe``.

    A client may hold `client_audio_s` seconds of audio (waiting or being decoded) and all clients
    together `total_audio_s`; `submit` refuses a request over either with `Refused`. A request's
    audio counts until its future is done, cancelled included: a cancelled request is dropped at
    the next pick.
    """

    def __init__(self, transcriber: Transcriber, workers: int = 1, client_audio_s: float = math.inf,
                 total_audio_s: float = math.inf):
        self.transcriber, self.workers = transcriber, workers
        self.client_audio_s, self.total_audio_s = client_audio_s, total_audio_s
        self.chunked = callable(getattr(transcriber, "chunks", None)) and callable(getattr(transcriber, "decode", None))
        self._cond = threading.Condition()
        self._jobs: list[_Job] = []
        self._held: dict[str, float] = {}
        self._total = 0.0
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def held(self, client: str) -> float:
        """Seconds of audio `client` has waiting or being decoded."""
        with self._cond:
            return self._held.get(client, 0.0)

    def check_room(self, client: str, seconds: float = 0.0) -> None:
        """Refuse (`Refused`) a request of `seconds` from `client` that is over an allowance now."""
        with self._cond:
            self._check_room(client, seconds)

    def _check_room(self, client: str, seconds: float) -> None:
        if self._closed:
            raise Refused("The server is shutting down: try again in a minute.")
        held = self._held.get(client, 0.0)
        if held + seconds > self.client_audio_s or held >= self.client_audio_s:
            clip = f" + {seconds:.0f} s in this clip" if seconds else ""
            raise Refused(f"Too much of your audio is waiting: {held:.0f} s queued{clip}, and one client may queue "
                          f"at most {self.client_audio_s:g} s. Wait for your transcripts, then send it again.")
        if self._total + seconds > self.total_audio_s or self._total >= self.total_audio_s:
            raise Refused(f"The server has {self._total / 60:.0f} minutes of audio waiting, all it takes: "
                          "try again in a few minutes.")

    def submit(self, audio, client: str = "local") -> Future:
        """Queue `audio` (16 kHz mono float32) from `client`; returns a future for its transcript.

        Blocks while the audio is split into speech chunks (VAD); raises `Refused` when the request is
        over the client's or the server's allowance, and whatever the backend raises while splitting.
        """
        seconds = len(audio) / SAMPLE_RATE
        with self._cond:
            self._check_room(client, seconds)
            job = _Job(client, seconds, next(self._seq), Future())
            self._held[client] = self._held.get(client, 0.0) + seconds
            self._total += seconds
        job.future.add_done_callback(lambda _: self._release(job))
        try:
            chunks = list(self.transcriber.chunks(audio)) if self.chunked else [audio]
        except BaseException:
            job.future.cancel()
            raise
        if not chunks:
            self._release(job)
            _settle(job.future, NO_SPEECH)
            return job.future
        with self._cond:
            job.chunks = chunks
            self._jobs.append(job)
            self._start_workers()
            self._cond.notify()
        return job.future

    def transcribe(self, audio, client: str = "local") -> str:
        """`submit` and wait for the transcript."""
        return self.submit(audio, client).result()

    def close(self, wait_s: float = 0.0) -> bool:
        """Stop the workers after the chunks in progress; requests still queued get `Refused`.

        Waits up to `wait_s` seconds for those chunks to end; returns whether every worker has
        stopped. A process that exits while a worker is inside the backend's decode can die in
        native code ("terminate called without an active exception") instead of exiting cleanly.
        """
        with self._cond:
            self._closed = True
            dropped, self._jobs = self._jobs, []
            self._cond.notify_all()
        for job in dropped:
            self._release(job)
            _settle(job.future, error=Refused("The app stopped before this clip was transcribed: try again."))
        return join_threads(self._threads, wait_s)

    def _release(self, job: _Job) -> None:
        """Stop counting `job`'s audio (once): before its future is settled, or when it is cancelled."""
        with self._cond:
            if job.released:
                return
            job.released = True
            left = self._held.get(job.client, 0.0) - job.seconds
            if left > 1e-6:
                self._held[job.client] = left
            else:
                self._held.pop(job.client, None)
            self._total = max(0.0, self._total - job.seconds)

    def _start_workers(self) -> None:
        while len(self._threads) < self.workers:
            thread = threading.Thread(target=self._work, name=f"whisper-sv-asr-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pick(self) -> _Job | None:
        self._jobs = [j for j in self._jobs if not j.future.done() or j.running]  # drop cancelled requests
        ready = [j for j in self._jobs if not j.running and not j.future.done()]
        return min(ready, key=lambda j: (j.done_s, j.seconds, j.seq), default=None)

    def _work(self) -> None:
        while True:
            with self._cond:
                while (job := self._pick()) is None and not self._closed:
                    self._cond.wait()
                if job is None:
                    return
                job.running = True
                chunk = job.chunks[len(job.texts)]
            error, text = None, ""
            try:
                if self.chunked:
                    (text,) = self.transcriber.decode([chunk])
                else:
                    text = self.transcriber.transcribe(chunk)
            except Exception as err:
                error = err
            result = None
            with self._cond:
                job.running = False
                job.texts.append(text)
                job.done_s += len(chunk) / SAMPLE_RATE
                finished = error is not None or len(job.texts) == len(job.chunks)
                if finished and job in self._jobs:  # not when `close` dropped it meanwhile
                    self._jobs.remove(job)
                    result = join_texts(job.texts) if self.chunked else text
                self._cond.notify()
            if finished:
                self._release(job)  # first, so the allowance is free when the client has its transcript
                _settle(job.future, result, error)


def _settle(future: Future, result=None, error: BaseException | None = None) -> None:
    """Give `future` its result or error, unless it was cancelled meanwhile."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def join_threads(threads, wait_s: float) -> bool:
    """Wait up to `wait_s` seconds in all for `threads` to end (never for the calling thread);
    returns whether every one has ended."""
    threads = list(threads)
    deadline = time.monotonic() + wait_s
    for thread in threads:
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in threads)
