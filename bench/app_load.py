"""Load test on loopback: N concurrent `gradio_client` clients each transcribe the same clip.

Bounded in count (clients x requests) and time (a deadline for the whole run and for each
request); the app is served in this process on 127.0.0.1 with the default backend and the default
queue and concurrency limits. Writes bench/out/app_load.json and prints the Markdown row for
docs/benchmarks.md. tests/test_app_load.py runs `run_load` with 20 clients.

    flock /tmp/whisper_sv_bench.lock python bench/app_load.py [--clients 20] [--requests 2]
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


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--requests", type=int, default=2, help="requests per client")
    p.add_argument("--seconds", type=float, default=5.0, help="clip length")
    p.add_argument("--deadline", type=float, default=600.0)
    p.add_argument("--out", type=Path, default=OUT / "app_load.json")
    args = p.parse_args(argv)

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
    try:
        result = run_load(url.rstrip("/"), clip, args.clients, args.requests, args.deadline)
    finally:
        demo.close()
    result.update(clip_s=args.seconds, backend=transcriber.name, machine={"cpu": cpu_model(), "cores": os.cpu_count()},
                  concurrency=cfg.concurrency, queue_size=cfg.queue_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"| {result['clients']} | {result['requests']} | {args.seconds:g} s | {result['ok']} | {len(result['errors'])} "
          f"| {result['p50_s']:.2f} | {result['p95_s']:.2f} | {result['wall_s']:.1f} | {result['throughput_rps']:.2f} |")
    for e in result["errors"][:10]:
        print("error:", e)
    return result


if __name__ == "__main__":
    main()
