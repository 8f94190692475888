"""Fuzz the audio loader: over 300 malformed files, made on the fly, each decoded by
`load_audio` with the app's cap in a worker process that the test watches.

Files: truncated, bit-flipped and header-mangled WAV (int16 and float), MP3, FLAC, OGG and M4A; the
same under wrong extensions; extreme sample rates and channel counts; playlists, lists and other
non-audio. Each must give samples (finite, mono, within [-1, 1]) or an `AudioError` with a one-line
message; never another exception, a dead worker, more than 10 s, or more than 500 MB (the worker's
peak resident memory above its baseline, and ffmpeg's).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

HANG_S = 10.0
MAX_MB = 500
MIN_FILES = 300

WORKER = textwrap.dedent(r"""
    import json, resource, sys
    import numpy as np
    from whisper_sv.audio.io import AudioError, load_audio

    def rss_mb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) / 1024

    base = rss_mb("VmRSS:")
    for line in sys.stdin:
        path = line.rstrip("\n")
        try:
            open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to now
        except OSError:
            pass
        out = {"path": path}
        try:
            audio = load_audio(path, max_seconds=600)
            ok = audio.ndim == 1 and audio.dtype == np.float32 and np.isfinite(audio).all() and np.abs(audio).max() <= 1
            out.update(outcome="audio" if ok else "bad-audio", samples=len(audio))
            del audio
        except AudioError as err:
            out.update(outcome="refused", reason=err.reason, message=str(err))
        except BaseException as err:
            out.update(outcome="crash", message=f"{type(err).__name__}: {err}")
        out["peak_mb"] = rss_mb("VmHWM:") - base
        out["ffmpeg_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(json.dumps(out), flush=True)
""")


def _base_files(folder: Path) -> dict[str, Path]:
    """One second of a speech-like tone in each format the fuzz mangles."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(44100) / 44100
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2 + 0.01 * rng.standard_normal(len(t)))
    tone = tone.astype(np.float32)
    files = {"wav16": ("WAV", "PCM_16", "wav"), "wavf": ("WAV", "FLOAT", "wav"), "flac": ("FLAC", None, "flac"),
             "ogg": ("OGG", "VORBIS", "ogg"), "mp3": ("MP3", None, "mp3")}
    out = {}
    for name, (fmt, subtype, ext) in files.items():
        out[name] = folder / f"base_{name}.{ext}"
        sf.write(out[name], np.stack([tone, tone * 0.5], axis=1), 44100, format=fmt, subtype=subtype)
    if shutil.which("ffmpeg"):
        out["m4a"] = folder / "base.m4a"
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(out["wav16"]), str(out["m4a"])], check=True)
    return out


def _wav_header_edits(data: bytes) -> list[bytes]:
    """WAV `fmt ` fields set to absurd values: channels, rate, byte rate, block align, bits, sizes."""
    edits = []
    for offset, size, value in [(22, 2, 0), (22, 2, 65535), (22, 2, 255), (24, 4, 0), (24, 4, 1), (24, 4, 655350),
                                (24, 4, 0xFFFFFFFF), (28, 4, 0), (32, 2, 0), (34, 2, 0), (34, 2, 7), (34, 2, 64),
                                (4, 4, 0xFFFFFFFF), (40, 4, 0xFFFFFFFF), (40, 4, 0), (16, 4, 0xFFFFFFFF), (20, 2, 0x55)]:
        b = bytearray(data)
        b[offset : offset + size] = value.to_bytes(size, "little")
        edits.append(bytes(b))
    return edits


def make_fuzz_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(13)
    files: list[Path] = []

    def add(name: str, data: bytes) -> None:
        path = folder / name
        path.write_bytes(data)
        files.append(path)

    for kind, base in _base_files(folder / "base").items():
        data, ext = base.read_bytes(), base.suffix
        for cut in (0, 3, 4, 12, 44, 100, len(data) // 10, len(data) // 3, len(data) // 2, len(data) * 9 // 10):
            add(f"{kind}_trunc{cut}{ext}", data[:cut])
        for seed in range(25):  # 1 to 64 flipped bits; half of the tries aim at the header
            b = bytearray(data)
            span = 64 if seed % 2 else len(b)
            for pos in rng.integers(0, min(span, len(b)), int(rng.integers(1, 65))):
                b[pos] ^= 1 << int(rng.integers(0, 8))
            add(f"{kind}_flip{seed}{ext}", bytes(b))
        mangled = [b"\0" * 16 + data[16:], b"\0" * 64 + data[64:], data[:4] + rng.bytes(40) + data[44:],
                   data[:12] + b"\xff" * 32 + data[44:], data[:8] + data, data[:4096] + rng.bytes(4096),
                   b"fLaC" + data[4:], b"OggS" + data[4:], b"RIFF\xff\xff\xff\x7fWAVE" + data[12:], b"ID3\x04\0\0\x7f\x7f\x7f\x7f" + data]
        if kind.startswith("wav"):
            mangled += _wav_header_edits(data)
        for i, m in enumerate(mangled):
            add(f"{kind}_mangle{i}{ext}", m)
        for wrong in (".mp3", ".wav", ".flac", ".txt"):
            if wrong != ext:
                add(f"{kind}_as{wrong.replace('.', '_')}{wrong}", data)

    # Extreme rates and channel counts, written by libsndfile (valid headers, absurd values).
    for rate in (1, 100, 999, 1000, 8000, 192000, 384000, 384001, 655350, 1_000_000, 4_000_000):
        for fmt, ext in (("WAV", "wav"), ("FLAC", "flac")):
            path = folder / f"rate{rate}.{ext}"
            try:
                sf.write(path, np.zeros(max(1, min(rate, 200_000)), np.float32), rate, format=fmt)
            except Exception:  # FLAC caps its rate: the WAV carries the case
                continue
            files.append(path)
    for channels in (2, 8, 64, 255, 1024):
        for fmt, ext in (("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg")):
            if fmt == "OGG" and channels > 255:
                continue  # Vorbis holds 255 channels; libsndfile's encoder crashes when asked for more
            path = folder / f"ch{channels}.{ext}"
            try:
                sf.write(path, np.zeros((4000, channels), np.float32), 16000, format=fmt)
            except Exception:  # FLAC holds at most 8 channels, Vorbis 255
                continue
            files.append(path)

    # Not audio at all, whatever the name says.
    target = folder / "base" / "base_wav16.wav"
    others = {
        "hls.mp3": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{target}\n#EXT-X-ENDLIST\n",
        "concat.wav": f"ffconcat version 1.0\nfile '{target}'\n", "pls.flac": f"[playlist]\nFile1={target}\n",
        "url.mp3": "#EXTM3U\n#EXTINF:10,\nhttp://127.0.0.1:9/x.mp3\n", "sdp.wav": "v=0\nm=audio 5004 RTP/AVP 0\n",
        "html.mp3": "<html><body>not audio</body></html>\n" * 20, "text.wav": "Det här är ingen ljudfil.\n" * 50,
        "json.ogg": json.dumps({"path": str(target)}), "empty.wav": "", "zeros.mp3": "\0" * 5000,
    }
    for name, text in others.items():
        add(name, text.encode())
    for seed in range(10):
        add(f"random{seed}.mp3", rng.bytes(int(rng.integers(1, 50_000))))
        magic = [b"RIFF", b"fLaC", b"OggS", b"ID3", b"\xff\xfb", b"\xff\xf1", b"FORM", b"caff", b"\x1a\x45\xdf\xa3", b"\0\0\0\x20ftypM4A "][seed]
        add(f"magic{seed}.wav", magic + rng.bytes(int(rng.integers(1, 20_000))))
    return files


class Worker:
    """A `load_audio` process fed one path at a time; replaced when it dies or hangs."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def load(self, path: Path) -> dict:
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], HANG_S)
        line = self.proc.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        alive = self.proc.poll() is None
        self.close()
        return {"path": str(path), "outcome": "hang" if alive else f"died ({self.proc.returncode})"}

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def load_each(files: list[Path]) -> list[dict]:
    """One outcome per file from a watched worker; a hung or dead worker is replaced."""
    worker, results = Worker(), []
    try:
        for path in files:
            result = worker.load(path)
            results.append(result)
            if result["outcome"] == "hang" or result["outcome"].startswith("died"):
                worker = Worker()
    finally:
        worker.close()
    return results


def misbehaved(results: list[dict]) -> list[dict]:
    """Outcomes other than samples or a one-line refusal, and loads over the memory bound."""
    return [r for r in results if r["outcome"] not in ("audio", "refused")
            or r.get("peak_mb", 0) > MAX_MB or r.get("ffmpeg_mb", 0) > MAX_MB
            or (r["outcome"] == "refused" and (not r["message"] or "\n" in r["message"]))]


PLAYLISTS = ("hls.mp3", "concat.wav", "pls.flac", "url.mp3")


@pytest.mark.slow
def test_fuzzed_audio_gives_audio_or_a_message(tmp_path):
    files = make_fuzz_files(tmp_path / "fuzz")
    assert len(files) >= MIN_FILES
    results = load_each(files)
    bad = misbehaved(results)
    assert not bad, "\n".join(json.dumps(r) for r in bad[:20])
    outcomes = {o: sum(r["outcome"] == o for r in results) for o in ("audio", "refused")}
    assert outcomes["audio"] > 30 and outcomes["refused"] > 100, outcomes  # the fuzz reaches both
    by_name = {Path(r["path"]).name: r for r in results}
    for name in PLAYLISTS:
        assert "playlists" in by_name[name]["message"], by_name[name]


def test_a_sample_of_the_fuzz_gives_audio_or_a_message(tmp_path):
    """The default run's share of the fuzz above: every 15th file and the playlists."""
    files = make_fuzz_files(tmp_path / "fuzz")
    sample = files[::15] + [f for f in files if f.name in PLAYLISTS]
    results = load_each(sample)
    bad = misbehaved(results)
    assert not bad, "\n".join(json.dumps(r) for r in bad[:20])
    assert {r["outcome"] for r in results} == {"audio", "refused"}
    by_name = {Path(r["path"]).name: r for r in results}
    assert all("playlists" in by_name[name]["message"] for name in PLAYLISTS), [by_name[n] for n in PLAYLISTS]
