"""Live transcription's policy on a scripted backend (what each decode says is given), and a real
60 s recording through the packaged base: committed text is never rewritten, two agreeing decodes
commit, a pause commits the utterance whole, sessions are bounded."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from whisper_sv.audio.io import SAMPLE_RATE
from whisper_sv.serving.live import LiveConfig, LiveSession, LiveSessions, SessionsFull, agreed_prefix, continuation

_SPEECH: list[np.ndarray] = []


def tone(seconds: float) -> np.ndarray:
    """`seconds` of continuous synthetic speech (espeak-ng reading Swedish words, no pause over ~0.3 s)."""
    if not _SPEECH:
        import subprocess

        from whisper_sv.audio.io import load_audio

        wav = subprocess.run(["espeak-ng", "-v", "sv", "-s", "170", "--stdout",
                              "ett två tre fyra fem sex sju åtta nio tio elva tolv tretton fjorton femton"],
                             capture_output=True, check=True).stdout
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            f.write(wav)
            f.flush()
            audio = load_audio(f.name)
        loud = np.flatnonzero(np.abs(audio) > 0.01)
        _SPEECH.append(audio[loud[0] : loud[-1]])
    speech = _SPEECH[0]
    reps = int(np.ceil(seconds * SAMPLE_RATE / len(speech)))
    return np.tile(speech, reps)[: int(seconds * SAMPLE_RATE)].astype(np.float32)


def quiet(seconds: float) -> np.ndarray:
    return (0.0005 * np.random.default_rng(1).standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


class Scripted:
    """A backend whose n-th decode returns the n-th script line (the last one from then on)."""

    name = "scripted"

    def __init__(self, *lines: str):
        self.lines, self.calls = list(lines), []

    def decode(self, chunks):
        self.calls.append(len(chunks[0]) / SAMPLE_RATE)
        return [self.lines[min(len(self.calls) - 1, len(self.lines) - 1)]]


def feed(session: LiveSession, audio: np.ndarray, step_s: float = 0.25) -> list:
    step = int(step_s * SAMPLE_RATE)
    return [u for i in range(0, len(audio), step) if (u := session.feed(audio[i : i + step])) is not None]


@pytest.fixture(scope="module")
def speech_is_speech():
    """The buzz must read as speech to Silero, or the tests below test nothing."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    spans = get_speech_timestamps(np.concatenate([quiet(1), tone(3), quiet(1)]), VadOptions(), sampling_rate=SAMPLE_RATE)
    assert spans and spans[0]["start"] < 1.3 * SAMPLE_RATE and spans[-1]["end"] > 3.7 * SAMPLE_RATE


def test_agreement_and_continuation_compare_words_not_spelling():
    assert agreed_prefix("Hej, på dig".split(), "hej på er".split()) == 2
    assert continuation(["Hej", "på"], "hej, på dig där".split()) == ["dig", "där"]
    assert continuation(["Hej", "på"], "Nej hej på dig".split()) == ["dig"]  # reworded before: after the match
    assert continuation([], ["a"]) == ["a"]


def test_two_agreeing_decodes_commit_and_the_rest_stays_tentative(speech_is_speech):
    backend = Scripted("Det här", "Det här är", "Det här är en", "Det här är en mening")
    session = LiveSession(backend, LiveConfig(step_s=1.0))
    updates = feed(session, tone(4.2))
    # The first decode (half a second of speech) is shown, not agreed with; the next two agree.
    assert [u.new for u in updates] == ["", "", "Det här är", "en"]
    assert updates[0].tentative == "Det här"
    assert updates[-1].committed == "Det här är en" and updates[-1].tentative == "mening"


def test_committed_text_is_never_rewritten_even_when_a_decode_changes_it(speech_is_speech):
    backend = Scripted("Hej", "Hej på", "Hej på dig", "Nej, på dig nu", "Nej, på dig nu igen")
    session = LiveSession(backend, LiveConfig(step_s=1.0))
    texts = [u.committed for u in feed(session, tone(4.2))]
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))
    assert texts[-1] == "Hej på"  # the reworded decodes commit nothing until the utterance closes
    final = session.finish()
    assert final.final and final.committed == "Hej på dig nu igen"  # the rest after the committed words
    assert final.utterance_end and not any(u.utterance_end for u in feed(LiveSession(backend), quiet(2)))


def test_a_pause_commits_the_utterance_whole_and_the_next_one_starts_after_it(speech_is_speech):
    backend = Scripted("Ett två", "Tre fyra", "Ett två tre", "Ett två tre fyra")
    session = LiveSession(backend, LiveConfig(step_s=1.0, pause_ms=500))
    updates = feed(session, np.concatenate([tone(2.0), quiet(1.5)]))
    assert updates[-1].committed == "Ett två tre fyra"  # the closing decode, committed whole
    assert len(session.buffer) < 1.6 * SAMPLE_RATE  # the closed utterance's audio is gone
    assert session.utterance == [] and session.tentative == []
    # The page continues the text at an utterance's end, and only there.
    assert updates[-1].utterance_end and not any(u.utterance_end for u in updates[:-1])


def test_first_words_and_a_pause_are_acted_on_between_steps(speech_is_speech):
    """With a 3 s step, the first decode still comes `first_decode_s` after speech starts, and a
    pause closes the utterance once `pause_ms` of it have passed, not at the next step."""
    backend = Scripted("Ett", "Ett två")
    session = LiveSession(backend, LiveConfig(step_s=3.0, pause_ms=300, first_decode_s=0.5))
    piece, seen = int(0.1 * SAMPLE_RATE), []
    audio = np.concatenate([quiet(0.5), tone(1.5), quiet(1.4)])
    for i in range(0, len(audio), piece):
        if (update := session.feed(audio[i : i + piece])) is not None:
            seen.append(((i + piece) / SAMPLE_RATE, update))
    (first_at, first), (closed_at, closed) = seen[0], seen[-1]
    assert first.tentative == "Ett" and first_at <= 0.5 + 0.5 + 0.25  # speech from 0.5 s; Silero needs a frame or two
    assert closed.utterance_end and closed.committed == "Ett två" and closed_at <= 2.0 + 0.3 + 0.25
    assert len(seen) == 2 and len(backend.calls) == 2  # no decode between: the 3 s step never came


class Prefixed(Scripted):
    """A scripted backend that takes a forced prefix, as the CTranslate2 backend does."""

    def __init__(self, *lines: str):
        super().__init__(*lines)
        self.prefixes = []

    def decode(self, chunks, prefix=""):
        self.prefixes.append(prefix)
        return super().decode(chunks)


def test_an_utterance_is_closed_after_the_ones_before_it(speech_is_speech):
    """The closing decode of an utterance hears the closed one before it (its audio in front, its
    committed words as the forced prefix) and commits what follows them; step decodes do not."""
    # Per utterance: its first decode, one step, the close.
    backend = Prefixed("Ett", "Ett två", "Ett två tre", "Fyra", "Fyra fem", "Fyra fem sex")
    session = LiveSession(backend, LiveConfig(step_s=1.0, pause_ms=300, context_s=10))
    feed(session, np.concatenate([tone(1.6), quiet(0.8), tone(1.6), quiet(0.8)]), step_s=0.1)
    assert session.committed == "Ett två tre Fyra fem sex".split()
    assert backend.prefixes[-1] == "Ett två tre" and set(backend.prefixes[:-1]) == {""}
    first_utterance = backend.calls[2]  # the first close: the utterance alone
    assert backend.calls[-1] > first_utterance + 1.5  # the last close: the first utterance's audio, then the second's


def test_a_loop_the_context_starts_is_dropped_with_it(speech_is_speech):
    """A closing decode that repeats the context (Whisper looping on earlier text) is thrown away
    with the context, and the utterance is decoded alone."""
    backend = Prefixed("Ett", "Ett två", "Ett två tre", "Fyra", "Fyra", "Ett två tre Ett två tre", "Fyra fem")
    session = LiveSession(backend, LiveConfig(step_s=1.0, pause_ms=300, context_s=10))
    feed(session, np.concatenate([tone(1.6), quiet(0.8), tone(1.6), quiet(0.8)]), step_s=0.1)
    assert session.committed == "Ett två tre Fyra fem".split()
    assert backend.prefixes[-2:] == ["Ett två tre", ""]  # tried with the context, then alone
    assert [ws for _, ws in session.context] == [["Fyra", "fem"]]  # the context starts again after the loop


def test_the_ct2_backend_decodes_what_follows_a_forced_prefix(sv_corpus):
    """Forcing the first words a decode would say anyway leaves the rest of it as it was; the
    text returned leaves the prefix out."""
    from whisper_sv.data.sources import iter_clips
    from whisper_sv.serving.inference import pick_backend

    backend = pick_backend("packaged:whisper-base")
    audio = next(iter(iter_clips(f"cv:{sv_corpus}", "train"))).audio
    words = backend.decode([audio])[0].split()
    assert len(words) >= 4, words
    assert backend.decode([audio], prefix=" ".join(words[:2]))[0].split() == words[2:]


def test_silence_decodes_nothing_and_keeps_no_audio():
    backend = Scripted("Hallucination")
    session = LiveSession(backend, LiveConfig(step_s=0.5))
    updates = feed(session, quiet(5))
    assert backend.calls == [] and all(u.committed == "" and u.tentative == "" for u in updates)
    assert len(session.buffer) <= 0.5 * SAMPLE_RATE + 0.25 * SAMPLE_RATE


def test_a_session_is_bounded_in_buffer_length_and_total_audio(speech_is_speech):
    backend = Scripted("bla bla bla")
    session = LiveSession(backend, LiveConfig(step_s=1.0, max_buffer_s=4.0, max_session_s=9.0))
    updates = feed(session, tone(12))
    assert max(backend.calls) <= 4.0 + 0.3  # no decode ever saw more than the buffer's limit
    assert updates[-1].final and session.received_s == pytest.approx(9.0)
    assert session.feed(tone(1)).final  # a finished session takes no more audio


def test_one_session_over_the_cap_is_refused_with_a_message_and_a_closed_one_frees_its_place():
    sessions = LiveSessions(LiveConfig(max_sessions=2))
    first, _ = sessions.open(Scripted("a")), sessions.open(Scripted("b"))
    with pytest.raises(SessionsFull, match="2 live sessions are running.*upload a recording instead"):
        sessions.open(Scripted("c"))
    sessions.close(first)
    assert sessions.running == 1 and sessions.open(Scripted("d"))


def test_shutdown_waits_for_the_decode_in_progress_when_asked(speech_is_speech):
    """The app's close waits (a bounded time) for a live decode in progress: exiting inside the
    backend's native decode can abort the process."""
    import threading

    started, release = threading.Event(), threading.Event()

    class Slow(Scripted):
        def decode(self, chunks):
            started.set()
            release.wait(10)
            return super().decode(chunks)

    for wait_s, stopped in ((0.0, False), (10.0, True)):
        started.clear(), release.clear()
        sessions = LiveSessions(LiveConfig())
        session = sessions.open(Slow("ett två"))
        sessions.executor.submit(feed, session, np.concatenate([quiet(0.5), tone(2.0)]))
        assert started.wait(10)
        timer = threading.Timer(0.3, release.set)
        timer.start()
        assert sessions.shutdown(wait_s=wait_s) is stopped
        timer.join()
        assert sessions.shutdown(wait_s=10.0)  # it ends either way: the feed in progress, then no more


def test_bad_settings_are_refused():
    for bad in ({"step_s": 0.01}, {"pause_ms": 10}, {"max_buffer_s": 40}, {"max_sessions": 0}, {"context_s": 40}):
        with pytest.raises(ValueError):
            LiveConfig(**bad)


def minute_recordings(sv_corpus) -> list:
    """Two recordings of 60 s and more stitched from all the corpus's sentences. One recording is
    too little to compare on: at this model's ~70 % WER on espeak-ng voices, the same recording sent
    as float or as 16-bit PCM moves one recording's live/offline ratio by 0.1."""
    from whisper_sv.audio.longform import long_recordings
    from whisper_sv.data.sources import iter_clips

    clips = [(c.id, c.audio, c.sentence, c.speaker) for split in ("train", "dev", "test")
             for c in iter_clips(f"cv:{sv_corpus}", split)]
    return long_recordings(clips, count=2, min_seconds=60)


def int16(audio: np.ndarray) -> np.ndarray:
    """`audio` as the 16-bit little-endian PCM the API's client sends."""
    return (np.clip(audio, -1, 1) * 32767).astype("<i2")


def pcm16(audio: np.ndarray) -> np.ndarray:
    """`audio` as a 16-bit file or the API's client carries it, back in float samples."""
    return int16(audio).astype(np.float32) / 32768.0


@pytest.mark.slow
def test_a_minute_of_speech_live_reads_like_the_offline_transcript(sv_corpus):
    """Two recordings of 60 s and more through the packaged base, fed in 100 ms pieces: the
    committed text's WER is within 10 % (relative) of the offline transcript's WER."""
    from whisper_sv.common.metrics import wer_report
    from whisper_sv.serving.inference import pick_backend

    recordings = minute_recordings(sv_corpus)
    backend = pick_backend("packaged:whisper-base")
    texts = [r.text for r in recordings]
    offline = wer_report(texts, [backend.transcribe(r.audio) for r in recordings])["wer"]
    live = []
    for recording in recordings:
        session = LiveSession(backend)
        feed(session, recording.audio, step_s=0.1)
        live.append(session.finish().committed)
    live = wer_report(texts, live)["wer"]
    assert live <= 1.1 * offline, (live, offline)


# ---------------------------------------------------------------------------------------------
# The WebSocket API of the app (ws://HOST:PORT/live), through a real client.


@pytest.fixture()
def live_app(tmp_path):
    """Start the app on a free loopback port with a given transcriber; yields (start, demos)."""
    pytest.importorskip("gradio")
    from test_app import free_port

    from whisper_sv.serving.app import AppConfig, build_app, launch
    from whisper_sv.serving.continuation import Continuer

    demos = []

    def start(transcriber, **fields):
        cfg = AppConfig(port=free_port(), upload_dir=str(tmp_path), **fields)
        demo = build_app(cfg, transcriber=transcriber, continuer=Continuer(None))
        demos.append(demo)
        _, url, _ = launch(demo, cfg, block=False)
        return url.rstrip("/").replace("http://", "ws://") + "/live", demo

    yield start
    for demo in demos:
        demo.close()


def stream(url: str, audio: np.ndarray, rate: int = SAMPLE_RATE, piece_s: float = 0.1, end: bool = True) -> list[dict]:
    """Send `audio` as 16-bit PCM pieces (as fast as the server takes them); the server's messages."""
    import json

    from websockets.sync.client import connect

    pcm = int16(audio).tobytes()
    step = int(piece_s * rate) * 2
    messages = []
    with connect(url, open_timeout=30, close_timeout=5) as ws:
        if rate != SAMPLE_RATE:
            ws.send(json.dumps({"sample_rate": rate}))
        for i in range(0, len(pcm), step):
            ws.send(pcm[i : i + step])
        if end:
            ws.send(json.dumps({"end": True}))
        for raw in ws:
            messages.append(json.loads(raw))
    return messages


class Slow(Scripted):
    def decode(self, chunks):
        import time

        time.sleep(0.05)
        return super().decode(chunks)


def test_the_api_streams_updates_and_ends_with_the_whole_transcript(live_app, speech_is_speech):
    import soxr

    url, _ = live_app(Scripted("Det här", "Det här är", "Det här är en", "Det här är en mening"))
    audio48 = soxr.resample(np.concatenate([tone(4.2), quiet(1.0)]), SAMPLE_RATE, 48000)
    messages = stream(url, audio48, rate=48000)
    assert messages[-1]["final"] and messages[-1]["committed"].startswith("Det här är en")
    committed = [m["committed"] for m in messages]
    assert all(b.startswith(a) for a, b in zip(committed, committed[1:]))  # never rewritten
    assert any(m["tentative"] for m in messages[:-1])


def test_what_the_api_does_does_not_depend_on_how_the_client_batches_its_audio(live_app, speech_is_speech):
    """The same audio sent in 100 ms pieces and in 1.3 s pieces gets the same decodes and updates:
    the server feeds its session 100 ms at a time on one grid, whatever arrived at once."""
    audio = np.concatenate([tone(2.2), quiet(0.8), tone(1.7), quiet(1.0)])
    runs = []
    for piece_s in (0.1, 1.3):
        backend = Scripted("Ett", "Ett två", "Ett två tre", "Fyra", "Fyra fem", "Fyra fem sex", "sju")
        url, _ = live_app(backend)
        runs.append((stream(url, audio, piece_s=piece_s), backend.calls))
    (messages, calls), (batched, batched_calls) = runs
    assert calls == batched_calls and messages == batched
    assert messages[-1]["final"] and len(calls) >= 5


def test_one_session_over_the_cap_is_told_to_try_again(live_app):
    import json

    from websockets.sync.client import connect

    url, _ = live_app(Scripted("a"), live_sessions=1)
    with connect(url) as first:
        first.send(np.zeros(1600, dtype="<i2").tobytes())
        with connect(url) as second:
            reply = json.loads(second.recv())
            assert "1 live sessions are running" in reply["error"]
            with pytest.raises(Exception):
                second.recv()
            assert second.close_code == 1013


def test_bad_messages_are_refused_in_one_line(live_app):
    import json

    from websockets.sync.client import connect

    url, _ = live_app(Scripted("a"))
    for message, code in (('{"sample_rate": 12345}', 1003), ("hello", 1003), (b"\0" * (300 << 10), 1009), (b"\0\0\0", 1009),
                          ([b"\0\0", '{"sample_rate": 48000}'], 1003)):  # the rate changes after the audio began
        with connect(url, max_size=None) as ws:
            for piece in message if isinstance(message, list) else [message]:
                ws.send(piece)
            assert set(json.loads(ws.recv())) == {"error"}
            with pytest.raises(Exception):
                ws.recv()
            assert ws.close_code == code


def test_a_client_that_vanishes_mid_stream_leaves_no_session_or_thread_behind(live_app, speech_is_speech):
    import threading
    import time

    from websockets.sync.client import connect

    url, demo = live_app(Slow("bla bla"))
    live = demo.live_sessions
    stream(url, tone(1.0), piece_s=0.5)  # one whole session first: the server's threads are all started
    time.sleep(0.5)
    before = {t.name for t in threading.enumerate()}
    ws = connect(url)
    pcm = (tone(3.0) * 32767).astype("<i2").tobytes()
    for i in range(0, len(pcm), 3200):
        ws.send(pcm[i : i + 3200])
    ws.socket.close()  # gone without a close handshake, mid-stream
    deadline = time.time() + 20
    while live.running and time.time() < deadline:
        time.sleep(0.1)
    assert live.running == 0
    ws.close()  # the client's own reader thread, not the server's

    def others() -> set[str]:  # threads started since, other than the decode pool's
        return {t.name for t in threading.enumerate() if not t.name.startswith("live-decode")} - before

    def pool() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("live-decode")]

    def settle(busy) -> None:  # threads end when they will; a loaded machine takes longer
        deadline = time.time() + 20
        while busy() and time.time() < deadline:
            time.sleep(0.1)

    settle(others)
    assert not others(), others()  # only the fixed decode pool, which is bounded:
    assert len(pool()) <= live.cfg.max_sessions
    demo.close()
    settle(pool)
    assert not pool()  # closing the app stops them


@pytest.mark.slow
def test_a_minute_streamed_to_the_api_reads_like_the_offline_transcript(live_app, sv_corpus):
    """The API client streams two recordings of 60 s and more; the committed text's WER is within
    10 % (relative) of the offline transcript's WER (packaged base, the app's backend)."""
    from whisper_sv.common.metrics import wer_report
    from whisper_sv.serving.inference import pick_backend

    recordings = minute_recordings(sv_corpus)
    backend = pick_backend("packaged:whisper-base")
    texts = [r.text for r in recordings]
    # Offline decodes what the client sends: the 16-bit PCM of the recordings.
    offline = wer_report(texts, [backend.transcribe(pcm16(r.audio)) for r in recordings])["wer"]
    url, _ = live_app(backend)
    live = wer_report(texts, [stream(url, r.audio)[-1]["committed"] for r in recordings])["wer"]
    assert live <= 1.1 * offline, (live, offline)


def test_the_readme_client_streams_a_file_and_prints_the_live_text(live_app, speech_is_speech, tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    import soundfile as sf

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Live transcription") :]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    url, _ = live_app(Scripted("Det här", "Det här är", "Det här är en mening"))
    assert "ws://127.0.0.1:7860/live" in code
    sf.write(tmp_path / "clip.wav", (np.concatenate([tone(2.5), quiet(0.8)]) * 32767).astype(np.int16), SAMPLE_RATE)
    # The client notes when it sends its end, so the test sees the text printed while audio still went out.
    client = code.replace("ws://127.0.0.1:7860/live", url).replace(
        '    ws.send(json.dumps({"end": True}))', '    print("-- end sent", flush=True)\n    ws.send(json.dumps({"end": True}))')
    assert "-- end sent" in client
    (tmp_path / "client.py").write_text(client)
    done = subprocess.run([sys.executable, "client.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("Det här är")
    assert any(line.strip() != "|" for line in lines[: lines.index("-- end sent")]), lines  # words while streaming


def test_audio_sent_in_pieces_is_resampled_as_one_stream():
    """A browser sends 0.1 s pieces at its own rate: they must join without a click at each boundary."""
    import soxr

    from whisper_sv.serving.live import _audio

    t = np.arange(48000) / 48000
    sine = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    pcm = (sine * 32767).astype("<i2").tobytes()
    state, pending = {"rate": 48000, "samples": 0}, []
    for i in range(0, len(pcm), 9600):  # 0.1 s of 48 kHz int16
        assert _audio({"bytes": pcm[i : i + 9600]}, state, pending) is None
    got = np.concatenate(pending)
    whole = soxr.resample(sine, 48000, SAMPLE_RATE)
    assert len(whole) - 0.05 * SAMPLE_RATE < len(got) <= len(whole)  # the filter holds back its last ~20 ms
    assert np.max(np.abs(got - whole[: len(got)])) < 1e-3  # pieces resampled apart differ by ~1e-2 at the joins


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed (only this syntax check needs it)")
def test_the_pages_live_script_parses(tmp_path):
    """A syntax error in the live panel's script only shows in the browser's console, and the panel
    then does nothing: parse it as Gradio runs it (the body of a function of `element`, ...)."""
    from whisper_sv.serving.live_page import SCRIPT

    check = tmp_path / "check.js"
    check.write_text("new Function('element', 'trigger', 'props', require('fs').readFileSync(process.argv[2], 'utf8'));\n")
    (tmp_path / "panel.js").write_text(SCRIPT)
    out = subprocess.run(["node", str(check), str(tmp_path / "panel.js")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_the_bench_counts_a_words_lag_from_the_sentence_it_was_heard_in():
    """bench/live.py's commit lag: new words are matched only to the reference words of the audio
    their update decoded. Over the whole recording, a word of a late sentence ("och") matched the
    same word of a sentence long closed, whose lag no word had."""
    from helpers import load_bench

    from whisper_sv.audio.longform import Recording, Segment

    bench = load_bench("live")
    rec = Recording("r", np.zeros(SAMPLE_RATE * 20, dtype=np.float32),
                    [Segment(1.0, 3.0, "hej och hå"), Segment(10.0, 12.0, "sol och vind")])
    # Both sentences misheard but for one "och", heard in the second (committed at 12.5 s from the
    # utterance of 9.5-12.5 s).
    commits = [(3.5, ["dej", "ock", "ho"], (0.5, 3.5)), (12.5, ["bol", "och", "bind"], (9.5, 12.5))]
    lags, share = bench.lags(rec, commits)
    ends = [end for _, end in bench.word_spans(rec)]
    assert ends[2] == 3.0 and ends[5] == 12.0 and ends[3] < ends[4] < ends[5]
    assert lags == [pytest.approx(12.5 - ends[4])] and share == pytest.approx(1 / 6)


def test_the_bench_runs_a_session_beside_uploads_and_stops_them_with_it():
    """bench/live.py's "beside uploads" row: the fair queue transcribes the upload again and again
    while the session runs, and the upload in progress is dropped when the session ends, so the
    bench neither hangs on a long upload nor leaves the queue's thread behind."""
    import threading
    import time

    from helpers import load_bench
    from test_app_fairness import ChunkFake

    from whisper_sv.audio.longform import Recording, Segment

    bench = load_bench("live")
    session = Recording("s", quiet(1.0), [Segment(0.2, 0.8, "ord")])
    upload = Recording("u", quiet(0.3), [Segment(0.0, 0.3, "ord")])
    long = Recording("l", quiet(600.0), [Segment(0.0, 600.0, "ord")])  # 60 chunks of 0.05 s: 3 s, past the 1 s session, if not dropped
    before = {t.name for t in threading.enumerate()}
    result, uploads = bench.beside_uploads(ChunkFake(step_s=0.05), session, upload, LiveConfig())
    assert uploads["uploads_done"] >= 3 and uploads["upload_s"] == pytest.approx(0.3)
    assert result["text"] == "" and result["backlog_s"] < 1.0
    _, uploads = bench.beside_uploads(ChunkFake(step_s=0.05), session, long, LiveConfig())
    assert uploads["uploads_done"] == 0  # dropped when the session ended, not waited for (3 s)
    row = {"model": "fake", "sessions": 1, "beside": "uploads", **uploads,
           **bench.summary(ChunkFake(), [session], [result], offline=False)}
    assert "beside uploads" in bench.describe(row) and "CPU" not in bench.describe(row)  # printed without a CPU share
    time.sleep(0.2)
    assert not {t.name for t in threading.enumerate() if t.name.startswith("whisper-sv-asr")} - before
