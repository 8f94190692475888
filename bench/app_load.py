"""Load test on loopback: N concurrent `gradio_client` clients each transcribe the same clip.

Bounded in count (clients x requests) and time (a deadline for the whole run and for each
request); the app is served in this process on 127.0.0.1 with the default backend and the default
queue and concurrency limits. Writes bench/out/app_load.json and prints the Markdown row for
docs/benchmarks.md. tests/test_app_load.py runs `run_load` with 20 clients.

With ``--hostile`` each client alternates a valid request with a hostile one (bombs,
a 655 kHz FLAC, a playlist naming a server file, random bytes, oversize text, an oversize body,
a multi-file upload, an absurd temperature): every valid request must succeed, every hostile one
be refused with a message; the app process's peak RSS is sampled. Writes app_load_hostile.json.

With ``--mix long-short`` long uploads compete with short clips: 16 short clips from 16 clients,
started ``--gap`` seconds apart, first alone, then again after 4 uploads of 6-9 minutes of synthetic
speech (``--long-seconds``, each from its own client) were sent. It reports the short clips'
p50/p95 latency alone and in the mix, the ratio, and the long uploads' latencies; each simulated
client sends its own X-Forwarded-For address (trusted on loopback), so each counts as one client
against the app's per-client allowance of queued audio. Writes app_load_long_short.json.

    flock /tmp/whisper_sv_bench.lock python bench/app_load.py [--clients 20] [--requests 2] [--hostile]
    flock /tmp/whisper_sv_bench.lock python bench/app_load.py --mix long-short [--shorts 16] [--gap 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_load(url: str, clip: str | Path, clients: int = 20, requests_per_client: int = 1,
             deadline_s: float = 300.0, expect: str | None = None) -> dict:
    """Start `clients` threads together, each with its own `gradio_client.Client`, each sending
    `requests_per_client` /transcribe calls in turn. Returns latencies (s, per request, measured
    from submit to result, so queueing is included), errors and wall time."""
    from gradio_client import Client, handle_file

    assert url.startswith(("http://127.0.0.1", "http://localhost")), "the load test only targets loopback"
    start = threading.Barrier(clients)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    t_end = time.monotonic() + deadline_s

    def one_client(i: int) -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as err:  # the barrier still needs this thread
            with lock:
                errors.append(f"client {i}: connect: {err}")
            start.wait()
            return
        start.wait()
        for _ in range(requests_per_client):
            started = time.perf_counter()
            try:
                job = client.submit(handle_file(str(clip)), api_name="/transcribe")
                text = job.result(timeout=max(1.0, t_end - time.monotonic()))
                if expect is not None and expect not in text:
                    raise AssertionError(f"unexpected transcript {text!r}")
            except Exception as err:
                with lock:
                    errors.append(f"client {i}: {type(err).__name__}: {err}")
                continue
            with lock:
                latencies.append(time.perf_counter() - started)

    wall = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(one_client, i) for i in range(clients)]
        _, late = wait(futures, timeout=deadline_s + 30)
    wall = time.perf_counter() - wall
    if late:
        errors.append(f"{len(late)} clients still running after the {deadline_s:g} s deadline")
    return {
        "clients": clients, "requests": clients * requests_per_client, "ok": len(latencies),
        "errors": errors, "wall_s": wall, "throughput_rps": len(latencies) / wall if wall else 0.0,
        "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95),
        "max_s": max(latencies, default=float("nan")), "latencies_s": sorted(latencies),
    }


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def hostile_files(folder: Path, secret: Path) -> dict[str, Path]:
    """The uploads of the hostile mix, made once: each must be refused with a message."""
    import subprocess

    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / name for name in ("bomb_3h.flac", "rate_655k.flac", "playlist.mp3", "random.mp3")}
    if not files["bomb_3h.flac"].exists():  # 3 h of silence, streamed: no length in the header
        with open(files["bomb_3h.flac"], "wb") as out:
            subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "10800",
                            "-c:a", "flac", "-f", "flac", "pipe:1"], stdout=out, check=True)
    if not files["rate_655k.flac"].exists():  # 599 s at 655,350 Hz in 1.5 MB
        zeros = np.zeros(655_350 * 10, np.int16)
        with sf.SoundFile(files["rate_655k.flac"], "w", 655_350, 1, format="FLAC") as f:
            for i in range(60):
                f.write(zeros if i < 59 else zeros[: 655_350 * 9])
    files["playlist.mp3"].write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{secret}\n#EXT-X-ENDLIST\n")
    files["random.mp3"].write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    return files


def run_hostile(url: str, clip: str | Path, files: dict[str, Path], clients: int = 20, rounds: int = 2,
                deadline_s: float = 600.0) -> dict:
    """`clients` threads; each sends `rounds` x (one valid /transcribe, then the next hostile request
    in turn). Returns valid latencies and errors, hostile outcomes, and the process's peak RSS."""
    import httpx
    from gradio_client import Client, handle_file

    assert url.startswith(("http://127.0.0.1", "http://localhost")), "the load test only targets loopback"
    upload = f"{url}/gradio_api/upload"

    def via_client(client, *args, api_name):
        return client.submit(*args, api_name=api_name).result(timeout=max(1.0, t_end - time.monotonic()))

    def multi_file(_client):  # three files in one upload: HTTP 413
        r = httpx.post(upload, files=[("files", (f"f{i}.wav", bytes([i]) * 1000)) for i in range(3)], timeout=60)
        if r.status_code != 413:
            raise AssertionError(f"multi-file upload: HTTP {r.status_code}")
        return r.text

    def big_body(_client):  # 5 MB of JSON: HTTP 413 before Gradio parses it
        r = httpx.post(f"{url}/gradio_api/call/continue", json={"data": ["x" * 5_000_000, 8, 0.0]}, timeout=60)
        if r.status_code != 413:
            raise AssertionError(f"5 MB body: HTTP {r.status_code}")
        return r.text

    hostile = [(f"upload {name}", lambda c, p=path: via_client(c, handle_file(str(p)), api_name="/transcribe"))
               for name, path in files.items()]
    hostile += [("30,000 characters to /continue", lambda c: via_client(c, "hej " * 7_500, 8, 0.0, api_name="/continue")),
                ("temperature 1e-40", lambda c: via_client(c, "Hej", 8, 1e-40, api_name="/continue")),
                ("three files in one upload", multi_file), ("5 MB request body", big_body)]
    start = threading.Barrier(clients)
    latencies, errors, refused, accepted = [], [], [], []
    lock = threading.Lock()
    t_end = time.monotonic() + deadline_s

    def one_client(i: int) -> None:
        client = Client(url, verbose=False)
        start.wait()
        for r in range(rounds):
            started = time.perf_counter()
            try:
                via_client(client, handle_file(str(clip)), api_name="/transcribe")
                with lock:
                    latencies.append(time.perf_counter() - started)
            except Exception as err:
                with lock:
                    errors.append(f"client {i}: {type(err).__name__}: {err}")
            name, attack = hostile[(i * rounds + r) % len(hostile)]
            try:
                out = attack(client)
                ok = "HTTP 413" if name in ("three files in one upload", "5 MB request body") else None
                with lock:
                    (refused if ok else accepted).append(f"{name}: {out!s:.80}")
            except Exception as err:  # the expected outcome: a refusal with a message
                with lock:
                    refused.append(f"{name}: {str(err).splitlines()[0][:100] if str(err) else type(err).__name__}")

    wall = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        _, late = wait([pool.submit(one_client, i) for i in range(clients)], timeout=deadline_s + 30)
    wall = time.perf_counter() - wall
    if late:
        errors.append(f"{len(late)} clients still running after the {deadline_s:g} s deadline")
    return {
        "clients": clients, "valid_requests": clients * rounds, "valid_ok": len(latencies), "valid_errors": errors,
        "hostile_requests": clients * rounds, "hostile_refused": len(refused), "hostile_accepted": accepted,
        "refusals": sorted(set(refused)), "wall_s": wall, "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95), "max_s": max(latencies, default=float("nan")),
        "latencies_s": sorted(latencies),
    }


def run_long_short(url: str, short_clip: str | Path, long_clips: list[Path], shorts: int = 16, gap_s: float = 0.5,
                   lead_s: float = 3.0, deadline_s: float = 900.0) -> dict:
    """After one warm-up request, `shorts` short clips alone, then the same again `lead_s` after
    `long_clips` were submitted. Each short clip comes from its own client, started `gap_s` after the
    previous one; every client (short or long) sends its own X-Forwarded-For address. Returns
    latencies (submit to result) and errors."""
    from gradio_client import Client, handle_file

    assert url.startswith(("http://127.0.0.1", "http://localhost")), "the load test only targets loopback"
    t_end = time.monotonic() + deadline_s
    errors: list[str] = []
    lock = threading.Lock()

    def client(address: str) -> Client:
        return Client(url, verbose=False, headers={"X-Forwarded-For": address})

    def timed(c: Client, clip, out: list[float], label: str, delay: float = 0.0) -> None:
        time.sleep(delay)
        started = time.perf_counter()
        try:
            c.submit(handle_file(str(clip)), api_name="/transcribe").result(timeout=max(1.0, t_end - time.monotonic()))
        except Exception as err:
            with lock:
                errors.append(f"{label}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            return
        with lock:
            out.append(time.perf_counter() - started)

    def short_round(tag: str) -> tuple[list[float], float]:
        clients = [client(f"10.1.{int(tag == 'mix')}.{i + 1}") for i in range(shorts)]  # made before the clock starts
        latencies: list[float] = []
        wall = time.perf_counter()
        threads = [threading.Thread(target=timed, args=(c, short_clip, latencies, f"short {tag} {i}", i * gap_s))
                   for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(1.0, t_end - time.monotonic()))
        return latencies, time.perf_counter() - wall

    client("10.0.0.1").predict(handle_file(str(short_clip)), api_name="/transcribe")  # warm-up, not counted
    alone, alone_wall = short_round("alone")
    long_clients = [client(f"10.2.0.{i + 1}") for i in range(len(long_clips))]
    long_latencies: list[float] = []
    long_threads = [threading.Thread(target=timed, args=(c, clip, long_latencies, f"long {clip.name}"))
                    for c, clip in zip(long_clients, long_clips)]
    wall = time.perf_counter()
    for t in long_threads:
        t.start()
    time.sleep(lead_s)  # the uploads are in and being decoded
    mix, mix_wall = short_round("mix")
    for t in long_threads:
        t.join(max(1.0, t_end - time.monotonic()))
    wall = time.perf_counter() - wall
    ratio = lambda q: percentile(mix, q) / percentile(alone, q) if alone and mix else float("nan")  # noqa: E731
    return {
        "shorts": shorts, "gap_s": gap_s, "lead_s": lead_s, "long_uploads": len(long_clips), "errors": errors,
        "short_alone": {"ok": len(alone), "p50_s": percentile(alone, 50), "p95_s": percentile(alone, 95),
                        "max_s": max(alone, default=float("nan")), "wall_s": alone_wall, "latencies_s": sorted(alone)},
        "short_mix": {"ok": len(mix), "p50_s": percentile(mix, 50), "p95_s": percentile(mix, 95),
                      "max_s": max(mix, default=float("nan")), "wall_s": mix_wall, "latencies_s": sorted(mix)},
        "ratio_p50": ratio(50), "ratio_p95": ratio(95),
        "long": {"ok": len(long_latencies), "latencies_s": sorted(long_latencies)}, "mix_wall_s": wall,
    }


def long_clips(seconds: list[float], clip_dir: Path) -> list[Path]:
    """Synthetic Swedish speech of each length as FLAC in bench/out, made once and kept."""
    import soundfile as sf

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from inference import speech_of_length

    paths = []
    for i, s in enumerate(seconds):
        path = OUT / f"long_{s:g}s.flac"
        if not path.exists():
            audio, _ = speech_of_length(s, clip_dir, seed=100 + i)
            sf.write(path, audio, 16000)
        paths.append(path)
    return paths


class PeakRSS:
    """The process's resident memory before and at its peak (sampled every 0.25 s) over a block:
    the app and the bench's client threads together."""

    def __enter__(self):
        self.before_mb = self.peak_mb = rss_mb()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(0.25):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--requests", type=int, default=2, help="requests per client")
    p.add_argument("--seconds", type=float, default=5.0, help="clip length")
    p.add_argument("--deadline", type=float, default=600.0)
    p.add_argument("--hostile", action="store_true", help="interleave hostile requests with the valid ones")
    p.add_argument("--mix", choices=["long-short"], default=None,
                   help="long-short: short clips alone, then behind 4 long uploads (--clients and --requests unused)")
    p.add_argument("--shorts", type=int, default=16, help="--mix: short clips per round")
    p.add_argument("--gap", type=float, default=0.5, help="--mix: seconds between the short clips' starts")
    p.add_argument("--long-seconds", default="360,420,480,540", help="--mix: lengths of the long uploads, s")
    p.add_argument("--out", type=Path, default=None, help="default: bench/out/app_load[_hostile|_long_short].json")
    args = p.parse_args(argv)
    if args.hostile and args.mix:
        p.error("--hostile and --mix are separate runs: give one")
    name = "app_load_hostile.json" if args.hostile else "app_load_long_short.json" if args.mix else "app_load.json"
    args.out = args.out or OUT / name

    import soundfile as sf

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from inference import cpu_model, speech_of_length

    from whisper_sv.serving.app import AppConfig, build_app, launch
    from whisper_sv.serving.inference import pick_backend

    clip_dir = OUT / "inference_clips"
    clip_dir.mkdir(parents=True, exist_ok=True)
    audio, _ = speech_of_length(args.seconds, clip_dir, seed=int(args.seconds))
    clip = OUT / f"load_{args.seconds:g}s.flac"
    sf.write(clip, audio, 16000)

    cfg = AppConfig(port=free_port())
    transcriber = pick_backend(cfg.model)  # what `whisper-sv app` serves by default
    demo = build_app(cfg, transcriber=transcriber)
    _, url, _ = launch(demo, cfg, block=False)
    files = hostile_files(OUT / "hostile", secret=next(clip_dir.resolve().glob("*.mp3"))) if args.hostile else {}
    longs = long_clips([float(x) for x in args.long_seconds.split(",")], clip_dir) if args.mix else []
    try:
        with PeakRSS() as rss:
            if args.mix:
                result = run_long_short(url.rstrip("/"), clip, longs, args.shorts, args.gap, deadline_s=args.deadline)
            elif args.hostile:
                result = run_hostile(url.rstrip("/"), clip, files, args.clients, args.requests, args.deadline)
            else:
                result = run_load(url.rstrip("/"), clip, args.clients, args.requests, args.deadline)
    finally:
        demo.close()
    result.update(rss_before_mb=rss.before_mb, peak_rss_mb=rss.peak_mb)
    result.update(clip_s=args.seconds, backend=transcriber.name, machine={"cpu": cpu_model(), "cores": os.cpu_count()},
                  concurrency=cfg.concurrency, queue_size=cfg.queue_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if args.mix:
        a, m = result["short_alone"], result["short_mix"]
        print(f"| {args.shorts} x {args.seconds:g} s behind {len(longs)} x {args.long_seconds} s "
              f"| {a['p50_s']:.2f} / {a['p95_s']:.2f} | {m['p50_s']:.2f} / {m['p95_s']:.2f} "
              f"| {result['ratio_p50']:.1f}x / {result['ratio_p95']:.1f}x "
              f"| {', '.join(f'{x:.0f}' for x in result['long']['latencies_s'])} | {len(result['errors'])} |"
              f"  (RSS {result['rss_before_mb']:.0f} -> {result['peak_rss_mb']:.0f} MB)")
        for e in result["errors"][:10]:
            print("error:", e)
        return result
    if args.hostile:
        print(f"| {result['clients']} | {result['valid_requests']} + {result['hostile_requests']} hostile | {args.seconds:g} s "
              f"| {result['valid_ok']} | {len(result['valid_errors'])} | {result['hostile_refused']} "
              f"| {result['p50_s']:.2f} | {result['p95_s']:.2f} | {result['wall_s']:.1f} "
              f"| {result['rss_before_mb']:.0f} -> {result['peak_rss_mb']:.0f} |")
        for e in result["valid_errors"][:10] + result["hostile_accepted"][:10]:
            print("error:", e)
        return result
    print(f"| {result['clients']} | {result['requests']} | {args.seconds:g} s | {result['ok']} | {len(result['errors'])} "
          f"| {result['p50_s']:.2f} | {result['p95_s']:.2f} | {result['wall_s']:.1f} | {result['throughput_rps']:.2f} |"
          f"  (RSS {result['rss_before_mb']:.0f} -> {result['peak_rss_mb']:.0f} MB)")
    for e in result["errors"][:10]:
        print("error:", e)
    return result


if __name__ == "__main__":
    main()
