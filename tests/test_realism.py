"""The acoustic effects of the synthetic corpus: each does what its knob says, and a
seed gives the same effects and the same samples."""

import numpy as np
import pytest

from whisper_sv.audio.realism import TELEPHONE_BAND_HZ, Effects, apply_effects, draw_effects, room_response

RATE = 16000
KNOBS = dict(snr_db=[5.0, 30.0], reverb_share=0.5, rt60_s=[0.2, 0.8], telephone_share=0.2, gain_db=[-12.0, 3.0], speed=[0.95, 1.05])


def _speechlike(seconds: float = 1.0) -> np.ndarray:
    """A 1 s harmonic tone with a syllable-rate envelope: energy across the telephone band and beyond."""
    t = np.arange(int(seconds * RATE)) / RATE
    tone = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 40))
    return (0.3 * tone / np.abs(tone).max() * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def _plain(**changes) -> Effects:
    """No effect at all, but for `changes`."""
    return Effects(**{**dict(speed=1.0, rt60_s=None, noise_colour=None, snr_db=0.0, telephone=False, gain_db=0.0, noise_seed=1), **changes})


def test_no_effect_leaves_the_samples_alone():
    audio = _speechlike()
    assert np.array_equal(apply_effects(audio, RATE, _plain()), audio)


def test_draws_are_seeded_within_their_ranges_and_shares():
    draws = [draw_effects(np.random.default_rng([3, i]), **KNOBS) for i in range(400)]
    assert draws == [draw_effects(np.random.default_rng([3, i]), **KNOBS) for i in range(400)]
    assert all(5 <= d.snr_db <= 30 and 0.95 <= d.speed <= 1.05 and -12 <= d.gain_db <= 3 for d in draws)
    assert 0.4 < np.mean([d.rt60_s is not None for d in draws]) < 0.6
    assert 0.12 < np.mean([d.telephone for d in draws]) < 0.28
    assert {d.noise_colour for d in draws} == {"white", "pink", "brown"}
    quiet = [draw_effects(np.random.default_rng([3, i]), **{**KNOBS, "snr_db": None}) for i in range(400)]
    assert all(q.noise_colour is None for q in quiet)
    assert [q.speed for q in quiet] == [d.speed for d in draws]  # one effect off leaves the others' draws


@pytest.mark.parametrize("colour", ["white", "pink", "brown"])
def test_noise_is_added_at_the_drawn_snr(colour):
    audio = _speechlike()
    noisy = apply_effects(audio, RATE, _plain(noise_colour=colour, snr_db=12.0))
    noise = noisy.astype(np.float64) - audio
    snr = 10 * np.log10(np.mean(audio.astype(np.float64) ** 2) / np.mean(noise**2))
    assert abs(snr - 12.0) < 0.1
    assert np.array_equal(noisy, apply_effects(audio, RATE, _plain(noise_colour=colour, snr_db=12.0)))


def test_the_telephone_line_keeps_only_its_band():
    audio = _speechlike()
    phone = apply_effects(audio, RATE, _plain(telephone=True))
    f = np.fft.rfftfreq(len(audio), 1 / RATE)
    power = np.abs(np.fft.rfft(phone)) ** 2
    low, high = 300, 3400  # a narrowband telephone line
    assert TELEPHONE_BAND_HZ == (low, high)
    outside = power[(f < low - 60) | (f > high + 60)].sum()
    assert outside < 1e-6 * power.sum()
    assert power[(f > low + 60) & (f < high - 60)].sum() > 0.5 * (np.abs(np.fft.rfft(audio)) ** 2)[(f > low) & (f < high)].sum()


def test_speed_room_and_gain():
    audio = _speechlike()
    assert abs(len(apply_effects(audio, RATE, _plain(speed=1.05))) - len(audio) / 1.05) < 2
    room = apply_effects(audio, RATE, _plain(rt60_s=0.5))
    assert len(room) == len(audio) + int(0.5 * RATE) - 1  # the room rings on after the sound stops
    assert np.abs(room[len(audio):]).max() > 1e-3
    response = room_response(RATE, 0.5, np.random.default_rng(0))
    late, early = response[int(0.4 * RATE):], response[1 : int(0.1 * RATE)]
    assert np.sqrt(np.mean(late**2)) < 0.01 * np.sqrt(np.mean(early[early != 0] ** 2))  # decays ~48 dB by 0.4 s
    louder = apply_effects(audio, RATE, _plain(gain_db=6.0))
    assert np.allclose(louder, np.clip(audio * 10 ** (6 / 20), -1, 1), atol=1e-6)
    assert apply_effects(audio * 3, RATE, _plain(gain_db=3.0)).max() == 1.0  # clipped at full scale
