import io

import numpy as np
import pytest
import soundfile as sf

from whisper_sv.audio.io import SAMPLE_RATE, AudioError, load_audio


def _wav_bytes(x, sr, fmt="WAV", subtype=None):
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
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


def test_container_is_judged_by_its_bytes_and_playlists_are_refused(tmp_path):
    """A playlist or concat list is not audio whatever its name; real formats are
    recognised from their first bytes under any name."""
    import shutil
    import subprocess

    from whisper_sv.audio.io import sniff_format

    secret = tmp_path / "secret.wav"
    sf.write(secret, np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    lists = [f"#EXTM3U\n#EXTINF:10,\n{secret}\n", f"ffconcat version 1.0\nfile '{secret}'\n",
             f"[playlist]\nFile1={secret}\n", "v=0\no=- 0 0 IN IP4 127.0.0.1\nm=audio 5004 RTP/AVP 0\n"]
    for i, text in enumerate(lists):
        for name in (f"list{i}.mp3", f"list{i}.wav", f"list{i}.flac"):
            (tmp_path / name).write_text(text)
            with pytest.raises(AudioError, match="playlists and files that point to other files are refused") as e:
                load_audio(tmp_path / name)
            assert e.value.reason == "undecodable"
        with pytest.raises(AudioError, match="refused"):
            load_audio(text.encode())
    tone = (0.3 * np.sin(np.arange(SAMPLE_RATE) / 5)).astype(np.float32)
    assert sniff_format(_wav_bytes(tone, SAMPLE_RATE)) == "wav"
    assert sniff_format(_wav_bytes(tone, SAMPLE_RATE, "FLAC")) == "flac"
    assert sniff_format(_wav_bytes(tone, SAMPLE_RATE, "OGG")) == "ogg"
    if shutil.which("ffmpeg") is None:
        return
    for ext, fmt in {"mp3": "mp3", "m4a": "mp4", "webm": "webm", "opus": "ogg", "aac": "aac", "aiff": "aiff", "caf": "caf"}.items():
        out = tmp_path / f"tone.{ext}"
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(secret), str(out)], check=True)
        assert sniff_format(out.read_bytes()[:4096]) == fmt, ext
        renamed = out.rename(tmp_path / f"tone_{ext}.wav")  # the name never decides
        assert abs(len(load_audio(renamed)) - SAMPLE_RATE) < 2048, ext


def test_float_audio_past_full_scale_is_scaled_to_a_peak_of_one():
    x = (np.sin(np.arange(SAMPLE_RATE) / 5) * 20000).astype(np.float32)  # a float WAV at int16 scale
    out = load_audio(_wav_bytes(x, SAMPLE_RATE, subtype="FLOAT"))
    assert np.abs(out).max() == pytest.approx(1.0)
    quiet = load_audio(_wav_bytes(x / 40000, SAMPLE_RATE, subtype="FLOAT"))  # within [-1, 1]: untouched
    assert np.abs(quiet).max() == pytest.approx(0.5, abs=1e-3)


def test_sample_rate_and_decoded_samples_are_capped():
    """Seconds are not the only cost: 655,350 Hz is refused from the header, and with a duration cap
    at most 48 kHz stereo's worth of samples per second is decoded (channels count)."""
    with pytest.raises(AudioError, match="655350 Hz") as e:
        load_audio(_wav_bytes(np.zeros(1000, np.float32), 655_350, "FLAC"), max_seconds=600)
    assert e.value.reason == "too_large"
    eight = np.zeros((48_000, 8), np.float32)  # 1 s of 8 channels at 48 kHz: 4x the samples of stereo
    with pytest.raises(AudioError, match="8 channel") as e:
        load_audio(_wav_bytes(eight, 48_000), max_seconds=1.5)
    assert e.value.reason == "too_large"
    assert load_audio(_wav_bytes(eight[:, :2], 48_000), max_seconds=1.5).shape == (SAMPLE_RATE,)
    assert load_audio(_wav_bytes(eight, 48_000)).shape == (SAMPLE_RATE,)  # no cap asked: decoded
