"""Load test on loopback: N concurrent `gradio_client` clients each transcribe the same clip.

Bounded in count (clients x requests) and time (a deadline for the whole run and for each
request); the app is served in this process on 127.0.0.1 with the default backend and the default
queue and concurrency limits. Writes bench/out/app_load.json and prints the Markdown row for
docs/benchmarks.md. tests/test_app_load.py runs `run_load` with 20 clients.

With ``--hostile`` each client alternates a valid request with a hostile one (issue #13: bombs,
a 655 kHz FLAC, a playlist naming a server file, random bytes, oversize text, an oversize body,
a multi-file upload, an absurd temperature): every valid request must succeed, every hostile one
be refused with a message; the app process's peak RSS is sampled. Writes app_load_hostile.json.

    flock /tmp/whisper_sv_bench.lock python bench/app_load.py [--clients 20] [--requests 2] [--hostile]
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
    p.add_argument("--out", type=Path, default=None, help="default: bench/out/app_load[_hostile].json")
    args = p.parse_args(argv)
    args.out = args.out or OUT / ("app_load_hostile.json" if args.hostile else "app_load.json")

    import soundfile as sf

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from inference import cpu_model, speech_of_length

    from whisper_sv.app import AppConfig, build_demo, launch
    from whisper_sv.inference import pick_backend

    clip_dir = OUT / "inference_clips"
    clip_dir.mkdir(parents=True, exist_ok=True)
    audio, _ = speech_of_length(args.seconds, clip_dir, seed=int(args.seconds))
    clip = OUT / f"load_{args.seconds:g}s.flac"
    sf.write(clip, audio, 16000)

    cfg = AppConfig(port=free_port())
    transcriber = pick_backend(cfg.model)  # what `whisper-sv app` serves by default
    demo = build_demo(cfg, transcriber=transcriber)
    _, url, _ = launch(demo, cfg, block=False)
    files = hostile_files(OUT / "hostile", secret=next(clip_dir.resolve().glob("*.mp3"))) if args.hostile else {}
    try:
        with PeakRSS() as rss:
            if args.hostile:
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
