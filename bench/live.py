"""Live transcription on this machine: latency, commit lag, real-time factor, and sessions at once.

Long recordings (60 s or more of the synthetic test and dev sentences, stitched with pauses, so
every sentence's start and end is known) are fed to live sessions in 100 ms pieces at real-time
pace, as a microphone would send them, on the app's backend (CTranslate2 int8). One session runs
on each recording in turn (`--recordings`, figures pooled over all of them: this model's words are
noisy, one minute is not enough); then two and three sessions at once on the first ones. Measured:

* first tentative word: from the first sentence's start to the first update that shows any text
  (the median over the recordings);
* commit lag: for each reference word the live transcript got right, from its end in the audio to
  the moment it is committed. Each update's new words are aligned (difflib) to the reference words
  of the audio that update decoded. Word ends are the sentence's span shared out by characters
  (synthetic speech is evenly paced; the sentence's own end is exact). A piece is fed when its last
  sample would have been recorded;
* real-time factor: decode time over audio time, per session; CPU seconds per audio second;
* the same with two, then three sessions at once on the 2 cores (`--most-sessions`, each its own
  recording), and whether they keep up (their backlog at the end of the audio);
* live WER against the offline transcript of the same recordings;
* one session while the app's fair queue (`FairScheduler`, as the app builds it) transcribes an
  upload over and over (the second recording): what an upload does to a live session's lag and
  real-time factor, and how fast the upload goes meanwhile.

Results: bench/out/live.json; docs/benchmarks.md has the recorded run with the machine named.
Usage: python bench/live.py [--model packaged:whisper-base] [--model runs/cpu-demo/ct2] [--seconds 60] [--recordings 4]
       [--no-early-close] [--first-decode-s 0.5]
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from pathlib import Path

import numpy as np

from whisper_sv.audio.io import SAMPLE_RATE
from whisper_sv.audio.longform import Recording, long_recordings
from whisper_sv.common.metrics import normalize_text, wer_report
from whisper_sv.data.sources import iter_clips
from whisper_sv.serving.inference import pick_backend, warm_up
from whisper_sv.serving.live import PIECE_S, LiveConfig, LiveSession
from whisper_sv.serving.scheduler import FairScheduler, Refused
from whisper_sv.synth.corpus import SynthConfig, synthesize

OUT = Path("bench/out")


def word_spans(recording: Recording) -> list[tuple[float, float]]:
    """Each reference word's (start, end) in seconds: its sentence's span shared out by characters."""
    spans = []
    for seg in recording.segments:
        words = seg.text.split()
        total = sum(len(w) + 1 for w in words)
        at = 0
        for w in words:
            start = seg.start + (seg.end - seg.start) * at / total
            at += len(w) + 1
            spans.append((start, seg.start + (seg.end - seg.start) * at / total))
    return spans


def utterance_start(session: LiveSession) -> float:
    """Where the audio the session holds (the utterance in progress) starts, in seconds of the stream:
    the next update's new words were heard from there on."""
    return session.received_s - len(session.buffer) / SAMPLE_RATE


def run_session(backend, recording: Recording, cfg: LiveConfig, result: dict) -> None:
    """Feed `recording` at real-time pace, each 100 ms piece when its last sample would have been
    recorded; note each update's new words, when they came and the audio they were heard in."""
    session = LiveSession(backend, cfg)
    step = int(PIECE_S * SAMPLE_RATE)
    start = time.perf_counter()
    first_text, commits = None, []  # commits: (wall s since start, new words, (audio from, audio to) in s)
    for i in range(0, len(recording.audio), step):
        piece = recording.audio[i : i + step]
        due = start + (i + len(piece)) / SAMPLE_RATE
        if (wait := due - time.perf_counter()) > 0:
            time.sleep(wait)
        heard_from = utterance_start(session)
        update = session.feed(piece)
        now = time.perf_counter() - start
        if update is not None:
            if first_text is None and (update.committed or update.tentative):
                first_text = now
            commits.append((now, update.new.split(), (heard_from, session.received_s)))
    audio_end = time.perf_counter() - start
    heard_from = utterance_start(session)
    final = session.finish()
    commits.append((time.perf_counter() - start, final.new.split(), (heard_from, session.received_s)))
    result.update(session=session, first_text=first_text, commits=commits, text=final.committed,
                  backlog_s=max(0.0, audio_end - recording.seconds))


def lags(recording: Recording, commits: list[tuple[float, list[str], tuple[float, float]]]) -> tuple[list[float], float]:
    """Commit lag of each reference word the live transcript got right: the time its live word was
    committed minus the reference word's end. An update's new words come from the audio of the
    utterance it decoded, so they are matched (difflib, normalised) only against the reference words
    of that stretch: aligned over the whole recording, a common word ("och", "det") of a later
    sentence matched one of a sentence long closed and counted a lag of 10 s that no word had.
    Returns the lags and the share of reference words matched."""
    import difflib

    spans = word_spans(recording)
    reference = [normalize_text(w) for w in recording.text.split()]
    out = []
    for t, new, (heard_from, heard_to) in commits:
        if not new:
            continue
        near = [j for j, (s, e) in enumerate(spans) if e > heard_from - 0.2 and s < heard_to]
        live = [normalize_text(w) for w in new]
        matcher = difflib.SequenceMatcher(None, [reference[j] for j in near], live, autojunk=False)
        out += [t - spans[near[m.a + d]][1] for m in matcher.get_matching_blocks() for d in range(m.size)]
    return out, len(out) / max(len(reference), 1)


def run_sessions(backend, recordings: list[Recording], cfg: LiveConfig) -> tuple[list[dict], float]:
    """One session per recording, all at once; their results and the CPU seconds they took."""
    results = [{} for _ in recordings]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    threads = [threading.Thread(target=run_session, args=(backend, rec, cfg, res)) for rec, res in zip(recordings, results)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return results, (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)


def beside_uploads(backend, recording: Recording, upload: Recording, cfg: LiveConfig) -> tuple[dict, dict]:
    """One session on `recording` while the app's fair queue transcribes `upload` again and again
    (one decode thread, as the app runs it); the session's result and the uploads' figures."""
    scheduler = FairScheduler(backend)
    stop, times = threading.Event(), []

    def uploads() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                scheduler.transcribe(upload.audio, client="upload")
            except Refused:  # closed under it: the session is over
                return
            times.append(time.perf_counter() - started)

    thread = threading.Thread(target=uploads, daemon=True)
    thread.start()
    try:
        (result,), _ = run_sessions(backend, [recording], cfg)
    finally:
        stop.set()
        scheduler.close(wait_s=120)  # the upload in progress is dropped after its chunk, which ends first
        thread.join()
    return result, {"uploads_done": len(times), "upload_s": upload.seconds,
                    "upload_wall_s_median": round(float(np.median(times)), 2) if times else None}


def summary(backend, recordings: list[Recording], results: list[dict], offline: bool) -> dict:
    """Pooled figures of sessions on `recordings`: lag percentiles over all matched words, the median
    first text, WER over all the audio, RTF and backlog at their worst."""
    all_lags, matched, firsts = [], [], []
    for rec, res in zip(recordings, results):
        lag, share = lags(rec, res["commits"])
        all_lags += lag
        matched.append(share)
        if res["first_text"] is not None:
            firsts.append(res["first_text"] - rec.segments[0].start)
    refs, hyps = [r.text for r in recordings], [res["text"] for res in results]
    row = {
        "recordings": len(recordings),
        "audio_s": round(sum(r.seconds for r in recordings), 1),
        "first_text_s": round(float(np.median(firsts)), 2) if firsts else None,
        "commit_lag_p50_s": round(float(np.percentile(all_lags, 50)), 2) if all_lags else None,
        "commit_lag_p95_s": round(float(np.percentile(all_lags, 95)), 2) if all_lags else None,
        "lag_words_matched": round(float(np.mean(matched)), 3),
        "rtf_max": round(max(res["session"].decode_s / rec.seconds for rec, res in zip(recordings, results)), 3),
        "decodes": sum(res["session"].decodes for res in results),
        "backlog_s_max": round(max(res["backlog_s"] for res in results), 2),
        "wer_live": round(wer_report(refs, hyps)["wer"], 4),
    }
    if offline:
        row["wer_offline"] = round(wer_report(refs, [backend.transcribe(r.audio) for r in recordings])["wer"], 4)
    return row


def measure(spec: str, recordings: list[Recording], cfg: LiveConfig, most: int = 3) -> list[dict]:
    """One session on each recording in turn, then 2 up to `most` at once on the first recordings,
    then one beside an upload loop."""
    backend = pick_backend(spec)
    warm_up(backend)  # as the app does: the first decode and Silero's first call are not a session's
    one, cpu = [], 0.0
    for rec in recordings:
        results, seconds = run_sessions(backend, [rec], cfg)
        one += results
        cpu += seconds
    rows = [{"model": spec, "sessions": 1, "cpu_s_per_audio_s": round(cpu / sum(r.seconds for r in recordings), 3),
             **summary(backend, recordings, one, offline=True)}]
    for n in range(2, most + 1):  # n sessions at once, each on its own recording: how many keep up
        results, cpu = run_sessions(backend, recordings[:n], cfg)
        for rec, res in zip(recordings[:n], results):
            rows.append({"model": spec, "sessions": n, "cpu_s_per_audio_s": round(cpu / sum(r.seconds for r in recordings[:n]), 3),
                         **summary(backend, [rec], [res], offline=False)})
    res, uploads = beside_uploads(backend, recordings[0], recordings[1], cfg)
    rows.append({"model": spec, "sessions": 1, "beside": "uploads", **uploads,
                 **summary(backend, recordings[:1], [res], offline=False)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="model spec(s) (default: packaged:whisper-base, and runs/cpu-demo/ct2 if it exists)")
    p.add_argument("--corpus", default="bench/out/live-corpus-600", help="synthetic corpus the recordings come from (made if missing)")
    p.add_argument("--seconds", type=float, default=60.0, help="each recording at least this long")
    p.add_argument("--recordings", type=int, default=4, help="recordings of --seconds each; one session on each in turn")
    p.add_argument("--most-sessions", type=int, default=3, help="run 2 up to this many sessions at once (each its own recording)")
    p.add_argument("--clips", type=int, default=600, help="clips of the synthetic corpus, when it is made")
    p.add_argument("--no-early-close", action="store_true", help="LiveConfig.early_close off: close at the next decode step")
    p.add_argument("--step-s", type=float, default=LiveConfig.step_s, help="LiveConfig.step_s")
    p.add_argument("--pause-ms", type=int, default=LiveConfig.pause_ms, help="LiveConfig.pause_ms")
    p.add_argument("--context-s", type=float, default=LiveConfig.context_s, help="LiveConfig.context_s (0: each utterance decoded alone)")
    p.add_argument("--first-decode-s", type=float, default=LiveConfig.first_decode_s, help="LiveConfig.first_decode_s")
    args = p.parse_args()
    models = args.model or ["packaged:whisper-base"] + (["runs/cpu-demo/ct2"] if Path("runs/cpu-demo/ct2/model.bin").is_file() else [])
    corpus = Path(args.corpus)
    if not (corpus / ".completed").is_file():
        synthesize(corpus, SynthConfig(clips=args.clips, seed=0), workers=2)
    clips = [(c.id, c.audio, c.sentence, c.speaker) for c in iter_clips(f"cv:{corpus}", "test")]
    clips += [(c.id, c.audio, c.sentence, c.speaker) for c in iter_clips(f"cv:{corpus}", "dev")]
    recordings = long_recordings(clips, count=args.recordings, min_seconds=args.seconds)
    if len(recordings) < max(args.recordings, args.most_sessions, 2):
        raise SystemExit(f"{corpus}: not enough test and dev speech for {args.recordings} recordings of {args.seconds:g} s: "
                         "pass --clips with more, and a new --corpus")
    cfg = LiveConfig(step_s=args.step_s, pause_ms=args.pause_ms, first_decode_s=args.first_decode_s, early_close=not args.no_early_close,
                     context_s=args.context_s)
    rows = []
    OUT.mkdir(parents=True, exist_ok=True)
    for spec in models:
        for row in measure(spec, recordings, cfg, most=args.most_sessions):
            rows.append(row)
            print(describe(row), flush=True)
        (OUT / "live.json").write_text(json.dumps({"config": vars(cfg), "results": rows}, indent=2))  # after each model: a later crash loses no rows
    print(f"wrote {OUT / 'live.json'}")


def describe(row: dict) -> str:
    """One printed line of a result row (the "beside uploads" rows have the uploads' figures, no CPU share)."""
    beside = (f" beside uploads ({row['uploads_done']} of {row['upload_s']} s done, "
              f"median {row['upload_wall_s_median']} s)" if "beside" in row else "")
    cpu = f", CPU s per audio s {row['cpu_s_per_audio_s']}" if "cpu_s_per_audio_s" in row else ""
    return (f"{row['model']} x{row['sessions']}{beside} on {row['recordings']} recording(s), {row['audio_s']} s: "
            f"first text {row['first_text_s']} s, commit lag p50 {row['commit_lag_p50_s']} s p95 {row['commit_lag_p95_s']} s "
            f"({row['lag_words_matched']:.0%} of words matched), RTF {row['rtf_max']}, backlog {row['backlog_s_max']} s{cpu}, "
            f"WER live {row['wer_live']}" + (f" offline {row['wer_offline']}" if "wer_offline" in row else ""))


if __name__ == "__main__":
    main()
