"""Fair scheduling in the app: a short clip is transcribed before a long upload sent earlier
finishes, and a client over its allowance of queued audio is refused with a one-line message.

The backend is a fake whose chunks are fixed 10 s slices (no VAD) and whose decode logs each chunk
it decodes, so the tests assert the order chunks were decoded in, never how long anything took.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import soundfile as sf

from whisper_sv.audio.io import SAMPLE_RATE

CHUNK_S = 10


class ChunkFake:
    """A backend with `chunks` (10 s slices) and `decode` (`step_s` of sleep per chunk). `log` holds
    the length in seconds of every chunk decoded, in order; with `gate`, every decode waits for the
    gate to open first, and `started` is set once the first decode has begun. `order` holds the
    first sample of every chunk decoded, which tells requests of different constant levels apart."""

    name = "chunk fake"

    def __init__(self, step_s: float = 0.0, gate: threading.Event | None = None):
        self.step_s, self.gate = step_s, gate
        self.log: list[float] = []
        self.order: list[float] = []
        self.lock = threading.Lock()
        self.started = threading.Event()

    def chunks(self, audio: np.ndarray) -> list[np.ndarray]:
        n = CHUNK_S * SAMPLE_RATE
        return [audio[i : i + n] for i in range(0, len(audio), n)]

    def decode(self, chunks) -> list[str]:
        texts = []
        for chunk in chunks:
            self.started.set()
            if self.gate is not None:
                assert self.gate.wait(60), "the test never opened the gate"
            time.sleep(self.step_s)
            seconds = len(chunk) / SAMPLE_RATE
            with self.lock:
                self.log.append(seconds)
                self.order.append(round(float(chunk[0]), 3))
            texts.append(f"{seconds:g}s")
        return texts

    def transcribe(self, audio: np.ndarray) -> str:  # the whole request at once, chunk after chunk
        return " ".join(self.decode(self.chunks(audio)))


def silence(seconds: float, level: float = 0.0) -> np.ndarray:
    return np.full(int(seconds * SAMPLE_RATE), level, np.float32)


# The scheduler alone ------------------------------------------------------------------------------


def test_a_short_request_goes_next_after_the_chunk_in_progress():
    from whisper_sv.serving.scheduler import FairScheduler

    gate = threading.Event()
    fake = ChunkFake(gate=gate)
    scheduler = FairScheduler(fake)
    try:
        long = scheduler.submit(silence(300), "a")  # 30 chunks
        assert fake.started.wait(30)  # the worker is inside the long request's first chunk
        short = scheduler.submit(silence(5), "b")
        gate.set()
        assert short.result(30) == "5s"
        assert long.result(30) == " ".join(["10s"] * 30)
    finally:
        scheduler.close()
    assert fake.log == [10, 5] + [10] * 29  # one long chunk before the short one, not thirty


def test_long_requests_take_turns_and_a_cancelled_one_is_dropped():
    from whisper_sv.serving.scheduler import FairScheduler

    gate = threading.Event()
    fake = ChunkFake(gate=gate)
    scheduler = FairScheduler(fake)
    try:
        first = scheduler.submit(silence(30, 0.1), "a")
        assert fake.started.wait(30)
        second = scheduler.submit(silence(25, 0.2), "b")  # 10 + 10 + 5
        gone = scheduler.submit(silence(600, 0.3), "c")
        assert gone.cancel()  # its client went away before any of it was decoded
        assert scheduler.held("c") == 0
        gate.set()
        assert first.result(30) == "10s 10s 10s" and second.result(30) == "10s 10s 5s"
    finally:
        scheduler.close()
    # Least audio decoded first, the shorter request on a tie; nothing of the cancelled one.
    assert fake.order == [0.1, 0.2, 0.2, 0.1, 0.2, 0.1]


def test_the_scheduler_refuses_audio_over_a_clients_allowance_and_frees_it_when_done():
    from whisper_sv.serving.scheduler import FairScheduler, Refused

    gate = threading.Event()
    scheduler = FairScheduler(ChunkFake(gate=gate), client_audio_s=100, total_audio_s=150)
    try:
        held = scheduler.submit(silence(60), "a")
        with pytest.raises(Refused) as err:
            scheduler.submit(silence(60), "a")
        message = str(err.value)
        assert "\n" not in message and "60 s queued + 60 s in this clip" in message and "at most 100 s" in message
        other = scheduler.submit(silence(60), "b")  # another client's allowance is its own
        with pytest.raises(Refused, match="minutes of audio waiting"):  # 120 + 60 s: over the server's 150 s
            scheduler.submit(silence(60), "c")
        gate.set()
        assert held.result(30) and other.result(30)
        assert scheduler.held("a") == 0
        assert scheduler.transcribe(silence(60), "a") == "10s " * 5 + "10s"  # room again
    finally:
        scheduler.close()


def test_close_waits_for_the_chunk_in_progress_when_asked():
    """A process that exits while a worker is inside the backend's decode can die in native code;
    `close(wait_s)` returns once the chunk in progress is done and its worker has stopped."""
    from whisper_sv.serving.scheduler import FairScheduler, Refused

    gate = threading.Event()
    fake = ChunkFake(gate=gate)
    scheduler = FairScheduler(fake)
    job = scheduler.submit(silence(30), "a")
    assert fake.started.wait(30)
    assert scheduler.close() is False  # no wait: the worker is still inside its chunk
    threading.Timer(0.3, gate.set).start()
    assert scheduler.close(wait_s=30) is True
    assert fake.log == [10] and not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("whisper-sv-asr"))
    with pytest.raises(Refused):
        job.result(5)


# Through the app and gradio_client ----------------------------------------------------------------


@pytest.fixture()
def app_with(tmp_path):
    """Start an app on a free loopback port with a given transcriber; closes what it started."""
    pytest.importorskip("gradio")
    from test_app import free_port

    from whisper_sv.serving.app import AppConfig, build_app, launch
    from whisper_sv.serving.continuation import Continuer

    demos = []

    def start(transcriber, **fields):
        cfg = AppConfig(port=free_port(), **fields)
        demo = build_app(cfg, transcriber=transcriber, continuer=Continuer(None))
        demos.append(demo)
        _, url, _ = launch(demo, cfg, block=False)
        return url.rstrip("/")

    yield start
    for demo in demos:
        demo.close()


def write_silence(path, seconds: float):
    sf.write(path, silence(seconds), SAMPLE_RATE, format="FLAC")  # a few KB: silence compresses
    return path


def test_a_short_clip_finishes_before_a_long_upload_sent_earlier(app_with, tmp_path):
    from gradio_client import Client, handle_file

    long_clip, short_clip = write_silence(tmp_path / "long.flac", 590), write_silence(tmp_path / "short.flac", 5)
    fake = ChunkFake(step_s=0.1)  # 59 long chunks
    url = app_with(fake)
    long_client, short_client = Client(url, verbose=False), Client(url, verbose=False)
    finished: list[str] = []

    def wait(job, name):
        job.result(timeout=120)
        finished.append(name)

    long_job = long_client.submit(handle_file(str(long_clip)), api_name="/transcribe")
    assert fake.started.wait(60)  # the long upload is being decoded
    short_job = short_client.submit(handle_file(str(short_clip)), api_name="/transcribe")
    waiters = [threading.Thread(target=wait, args=(job, name)) for job, name in ((long_job, "long"), (short_job, "short"))]
    for t in waiters:
        t.start()
    for t in waiters:
        t.join(150)
    assert short_job.result() == "5s" and long_job.result() == " ".join(["10s"] * 59)
    assert finished == ["short", "long"]
    assert fake.log.index(5) < 59, f"the short clip waited for all {fake.log.index(5)} chunks of the long upload"


def test_a_client_over_its_allowance_of_queued_audio_gets_a_message(app_with, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    clip = write_silence(tmp_path / "fifty.flac", 50)
    gate = threading.Event()
    fake = ChunkFake(gate=gate)
    url = app_with(fake, max_seconds=60, max_client_audio_s=80)
    client = Client(url, verbose=False)
    first = client.submit(handle_file(str(clip)), api_name="/transcribe")
    assert fake.started.wait(60)  # the first minute is held in the decoder
    try:
        with pytest.raises(AppError) as err:
            client.predict(handle_file(str(clip)), api_name="/transcribe")
    finally:
        gate.set()
    message = str(err.value)
    assert "Too much of your audio is waiting: 50 s queued + 50 s in this clip" in message
    assert "one client may queue at most 80 s" in message and "\n" not in message.strip()
    assert first.result(timeout=60) == "10s " * 4 + "10s"
    assert client.predict(handle_file(str(clip)), api_name="/transcribe") == "10s " * 4 + "10s"  # room again
