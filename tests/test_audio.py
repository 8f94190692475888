import io

import numpy as np
import pytest
import soundfile as sf

from whisper_sv.audio import SAMPLE_RATE, AudioError, load_audio


def _wav_bytes(x, sr, fmt="WAV"):
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt)
    return buf.getvalue()


def test_any_rate_and_stereo_become_16k_mono():
    sr = 44100
    t = np.arange(sr) / sr
    left, right = np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t) * 0.5
    out = load_audio(_wav_bytes(np.stack([left, right], 1).astype(np.float32), sr))
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - SAMPLE_RATE) <= 1
    assert np.abs(out).max() == pytest.approx(0.75, abs=0.02)  # the mean of the two channels


def test_decoded_dict_is_resampled_and_mixed_down():
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 8000)).astype(np.float32)
    out = load_audio({"array": x, "sampling_rate": 8000})
    assert out.shape == (16000,)


def test_bad_inputs_have_reasons(tmp_path):
    with pytest.raises(AudioError) as e:
        load_audio(tmp_path / "nope.wav")
    assert e.value.reason == "missing"
    with pytest.raises(AudioError) as e:
        load_audio(b"<html>not audio</html>" * 20)
    assert e.value.reason == "undecodable"
    with pytest.raises(AudioError) as e:
        load_audio(_wav_bytes(np.zeros(0, np.float32), 16000))
    assert e.value.reason == "empty"


def test_duration_cap_stops_before_decoding_everything():
    # 40 s of FLAC: the header knows the length, so decoding never starts.
    x = np.zeros(40 * 8000, np.float32)
    with pytest.raises(AudioError) as e:
        load_audio(_wav_bytes(x, 8000, "FLAC"), max_seconds=30)
    assert e.value.reason == "too_long"
    assert load_audio(_wav_bytes(x[: 8000 * 29], 8000, "FLAC"), max_seconds=30).shape == (29 * SAMPLE_RATE,)


def test_ffmpeg_fallback_reads_what_libsndfile_cannot(tmp_path):
    import shutil
    import subprocess

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed (make setup installs it)")
    src = tmp_path / "a.wav"
    sf.write(src, np.sin(np.arange(16000) / 10).astype(np.float32) * 0.3, 16000)
    m4a = tmp_path / "a.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(src), str(m4a)], check=True)
    out = load_audio(m4a)
    assert abs(len(out) - 16000) < 2048  # AAC adds priming samples
    with pytest.raises(AudioError) as e:
        load_audio(m4a, max_seconds=0.5)
    assert e.value.reason == "too_long"
