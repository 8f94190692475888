"""CTranslate2 on a CPU: encoder and decoder time at 1 thread and at all cores.

Why the app's CTranslate2 backend encodes on every core but decodes on one (`decode_threads`):
one decoder step is too small to split. Measured on the packaged base and on a random-weight model
with whisper-small's shape (768 wide, 12 + 12 layers; converted to int8 once into bench/out), as
no small checkpoint can be downloaded here. Random weights are fine for timing: the end token is
suppressed, so every decode runs to its length. Writes bench/out/decode_threads.json and prints the
table for docs/benchmarks.md.

    flock /tmp/whisper_sv_bench.lock python bench/decode_threads.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"
EOT = 50257
PROMPT = [50258, 50273, 50359, 50363]  # <|startoftranscript|><|sv|><|transcribe|><|notimestamps|>


def small_shaped(folder: Path) -> Path:
    """A random whisper-small-shaped model as an int8 CTranslate2 folder (built once)."""
    import shutil

    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from whisper_sv.models.packaged import packaged_transformers_dir
    from whisper_sv.serving.export import export_ct2

    ct2 = folder / "small-shaped-ct2"
    if (ct2 / "model.bin").is_file():
        return ct2
    base = Path(packaged_transformers_dir())
    cfg = WhisperConfig.from_pretrained(base)
    cfg.update(dict(d_model=768, encoder_layers=12, decoder_layers=12, encoder_attention_heads=12,
                    decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072))
    hf = folder / "small-shaped"
    WhisperForConditionalGeneration(cfg).save_pretrained(hf)
    for f in base.iterdir():  # tokenizer and preprocessor files, so the converter finds them
        if f.suffix in (".json", ".txt") and not (hf / f.name).exists():
            shutil.copy(f, hf / f.name)
    return export_ct2(str(hf), ct2, quantization="int8", force=True)


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tokens", type=int, default=40, help="tokens generated per decode")
    p.add_argument("--out", type=Path, default=OUT / "decode_threads.json")
    args = p.parse_args(argv)

    import ctranslate2

    from whisper_sv.models.packaged import packaged_ct2_dir

    cores = os.cpu_count() or 1
    models = {"base": packaged_ct2_dir(), "small-shaped": small_shaped(OUT)}
    rng = np.random.default_rng(0)
    rows = []
    for name, folder in models.items():
        loaded = {t: ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="int8", intra_threads=t)
                  for t in sorted({1, cores})}
        n_mels = loaded[cores].n_mels
        for window_s in (30, 15):
            feats = (rng.standard_normal((2, n_mels, 100 * window_s)) * 0.3).astype(np.float32)
            for batch in (1, 2):
                sv = ctranslate2.StorageView.from_array(feats[:batch])
                encoded = loaded[cores].encode(sv)
                row = {"model": name, "window_s": window_s, "batch": batch}
                for threads, model in loaded.items():
                    row[f"encode_s_{threads}"] = timed(lambda: model.encode(sv), args.reps)
                    result = model.generate(encoded, [PROMPT] * batch, beam_size=1, max_length=len(PROMPT) + args.tokens,
                                            suppress_tokens=[-1, EOT])
                    n = len(result[0].sequences_ids[0])
                    gen = timed(lambda: model.generate(encoded, [PROMPT] * batch, beam_size=1,
                                                       max_length=len(PROMPT) + args.tokens, suppress_tokens=[-1, EOT]), args.reps)
                    row[f"ms_per_token_{threads}"] = 1000 * gen / n
                rows.append(row)
                print(row, flush=True)
    results = {"cores": cores, "ctranslate2": ctranslate2.__version__, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return results


def markdown(results: dict) -> str:
    c = results["cores"]
    lines = [f"| model | window | batch | encode, 1 thread (s) | encode, {c} threads (s) | decode, 1 thread (ms/token) | decode, {c} threads (ms/token) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        lines.append(f"| {r['model']} | {r['window_s']} s | {r['batch']} | {r['encode_s_1']:.3f} | {r[f'encode_s_{c}']:.3f} | "
                     f"{r['ms_per_token_1']:.1f} | {r[f'ms_per_token_{c}']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
