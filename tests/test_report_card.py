"""The report card and its inputs: non-speech signals (`nonspeech`), stitched long-form recordings
and timestamp labels (`longform`), the card's figures, checks, table, Markdown and PNG
(`report_card`), and one run of ``report_card`` on tiny models end to end."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from helpers import stopping_tiny

from whisper_sv.audio import longform, nonspeech
from whisper_sv.audio.longform import Segment
from whisper_sv.evaluation import report_card as rc

SR = 16000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Kinds whose samples do not depend on the seed (no random phase, no noise floor).
SEEDLESS = {"silence", "tone_440hz", "tone_1khz", "sweep"}


def _dbfs(x: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return 20 * math.log10(rms) if rms > 0 else -math.inf


# ---------------------------------------------------------------------------------------------
# nonspeech


@pytest.mark.parametrize("kind", list(nonspeech.KINDS))
def test_every_kind_is_16khz_float32_of_the_asked_length_below_full_scale(kind):
    for seconds in (1.5, 0.37):
        x = nonspeech.nonspeech_clip(kind, seconds, seed=3)
        assert x.dtype == np.float32 and x.ndim == 1
        assert len(x) == round(seconds * SR), (kind, seconds, len(x))
        assert np.all(np.isfinite(x)) and float(np.max(np.abs(x))) < 1.0


@pytest.mark.parametrize("kind", list(nonspeech.KINDS))
def test_a_clip_is_a_function_of_kind_length_and_seed(kind):
    a, again, other = (nonspeech.nonspeech_clip(kind, 1.0, seed=s) for s in (5, 5, 6))
    assert np.array_equal(a, again)
    if kind in SEEDLESS:
        assert np.array_equal(a, other)
    else:
        assert not np.array_equal(a, other), f"{kind}: another seed gave the same samples"


def test_silence_is_zeros_and_levels_are_sensible():
    assert not np.any(nonspeech.nonspeech_clip("silence", 2.0, seed=1))
    levels = {kind: _dbfs(nonspeech.nonspeech_clip(kind, 2.0, seed=1)) for kind in nonspeech.KINDS}
    assert levels["room_tone"] < -55, levels  # a quiet room, far below speech
    for kind, level in levels.items():
        if kind not in ("silence", "room_tone"):
            assert -40 < level < -15, (kind, level)  # audible, never near full scale
    for tone in ("tone_440hz", "tone_1khz", "sweep"):
        assert levels[tone] > levels["room_tone"] + 30 and levels[tone] > levels["white_noise"]


def test_nonspeech_set_gives_each_kind_once_in_order():
    clips = nonspeech.nonspeech_set(0.5, seed=2)
    assert [k for k, _ in clips] == list(nonspeech.KINDS)
    assert all(len(x) == SR // 2 for _, x in clips)
    assert np.array_equal(dict(clips)["pink_noise"], nonspeech.nonspeech_clip("pink_noise", 0.5, seed=2))
    assert [k for k, _ in nonspeech.nonspeech_set(0.5, kinds=("hum_50hz", "drums"))] == ["hum_50hz", "drums"]


def test_training_clip_is_deterministic_per_index_and_seed_and_within_its_range():
    drawn = [nonspeech.training_clip(i, seed=4, seconds_range=(0.5, 1.5)) for i in range(12)]
    for i, (kind, x) in enumerate(drawn):
        assert kind in nonspeech.KINDS
        assert x.dtype == np.float32 and 0.5 * SR - 1 <= len(x) <= 1.5 * SR + 1, (kind, len(x))
        assert float(np.max(np.abs(x))) < 1.0
        again_kind, again = nonspeech.training_clip(i, seed=4, seconds_range=(0.5, 1.5))
        assert again_kind == kind and np.array_equal(again, x)
    assert len({len(x) for _, x in drawn}) > 6, "lengths should be drawn per index"
    assert len({k for k, _ in drawn}) > 3, "kinds should be drawn per index"
    other_seed = [nonspeech.training_clip(i, seed=5, seconds_range=(0.5, 1.5)) for i in range(12)]
    assert any(len(a) != len(b) or not np.array_equal(a, b) for (_, a), (_, b) in zip(drawn, other_seed))


def test_an_unknown_kind_is_refused_naming_the_kinds():
    with pytest.raises(ValueError, match="unknown non-speech kind 'birdsong'") as err:
        nonspeech.nonspeech_clip("birdsong", 1.0)
    assert all(kind in str(err.value) for kind in nonspeech.KINDS)


def test_a_very_short_crackle_is_made():
    assert len(nonspeech.nonspeech_clip("crackle", 0.002)) == 32


# ---------------------------------------------------------------------------------------------
# longform


def _sound(n: int, seed: int = 0, amplitude: float = 0.3) -> np.ndarray:
    return (amplitude * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def test_trim_silence_cuts_quiet_head_and_tail_but_keeps_the_margin():
    speech = _sound(SR, seed=1)
    quiet = _sound(4000, seed=2, amplitude=0.3 * 10 ** (-50 / 20))  # 50 dB under the speech: cut
    soft = _sound(1600, seed=3, amplitude=0.3 * 10 ** (-30 / 20))  # 30 dB under: kept
    audio = np.concatenate([np.zeros(8000, np.float32), speech, soft, quiet, np.zeros(8000, np.float32)])
    trimmed = longform.trim_silence(audio)
    margin = int(0.05 * SR)
    start, end = 8000 - margin, 8000 + SR + 1600 + margin
    assert np.array_equal(trimmed, audio[start:end]), (len(trimmed), end - start)
    assert np.array_equal(longform.trim_silence(audio, margin_s=0.0), audio[8000 : 8000 + SR + 1600])


def test_trim_silence_leaves_silent_and_tiny_audio_unchanged():
    silent = np.zeros(SR, np.float32)
    assert np.array_equal(longform.trim_silence(silent), silent) and len(longform.trim_silence(silent)) == SR
    tiny = _sound(100)
    assert np.array_equal(longform.trim_silence(tiny), tiny)


def _check_stitched(audio, segments, clips, pause_s, lead_s):
    assert audio.dtype == np.float32 and len(segments) == len(clips)
    for (clip, text), seg in zip(clips, segments):
        assert seg.text == text.strip()
        at = round(seg.start * SR)
        assert np.array_equal(audio[at : at + len(clip)], clip), f"{seg} is not where its clip is"
        for t in (seg.start, seg.end):
            assert abs(t / longform.TIME_PRECISION - round(t / longform.TIME_PRECISION)) < 1e-6, f"{t} off the 20 ms grid"
    for a, b in zip(segments, segments[1:]):
        assert a.start < a.end < b.start, (a, b)
        assert pause_s[0] - 1e-6 <= b.start - a.end <= pause_s[1] + 1e-6, (a, b)
    assert lead_s[0] - 0.011 <= segments[0].start <= lead_s[1] + 0.011
    assert lead_s[0] - 0.011 <= len(audio) / SR - segments[-1].end <= lead_s[1] + 0.011


def test_stitch_places_each_clip_at_its_segment_start():
    # Clip lengths on the 20 ms grid: every boundary is exact.
    clips = [(_sound(SR + 320 * i, seed=i), f" Mening nummer {i}. ") for i in range(6)]
    audio, segments = longform.stitch(clips, np.random.default_rng(0))
    _check_stitched(audio, segments, clips, (0.4, 1.2), (0.1, 0.6))
    assert len(audio) > sum(len(c) for c, _ in clips) + 5 * 0.4 * SR
    # The pauses hold a faint noise floor (about -60 dBFS), not digital zero.
    pause = audio[round(segments[0].end * SR) : round(segments[1].start * SR)]
    assert np.count_nonzero(pause) > 0.99 * len(pause)
    assert -63 < _dbfs(pause) < -57
    wide = longform.stitch(clips, np.random.default_rng(1), pause_s=(2.0, 2.5), lead_s=(1.0, 1.2))
    _check_stitched(*wide, clips, (2.0, 2.5), (1.0, 1.2))
    again = longform.stitch(clips, np.random.default_rng(0))
    assert again[1] == segments and np.array_equal(again[0], audio)


def test_stitch_keeps_boundaries_on_the_20ms_grid_for_trimmed_clip_lengths():
    # trim_silence cuts in 10 ms frames: its clips are multiples of 160 samples, not of 320.
    clips = [(_sound(SR + 160 * i, seed=i), f"Mening {i}.") for i in range(5)]
    audio, segments = longform.stitch(clips, np.random.default_rng(0))
    _check_stitched(audio, segments, clips, (0.4, 1.2), (0.1, 0.6))


def test_stitch_places_clips_of_any_length_exactly():
    clips = [(_sound(SR + 123 * i, seed=i), f"Mening {i}.") for i in range(5)]
    audio, segments = longform.stitch(clips, np.random.default_rng(0))
    for (clip, _), seg in zip(clips, segments):
        at = round(seg.start * SR)
        assert np.array_equal(audio[at : at + len(clip)], clip), seg


def _spoken_clips(n: int, seconds: float = 2.0):
    """(id, audio, text, speaker): sound with 0.1 s of silence at either end."""
    out = []
    for i in range(n):
        audio = np.zeros(int(seconds * SR), np.float32)
        audio[1600:-1600] = _sound(len(audio) - 3200, seed=i)
        out.append((f"c{i:03d}", audio, f"Mening nummer {i}.", f"spk{i % 3}"))
    return out


def test_long_recordings_join_consecutive_trimmed_clips_in_order():
    clips = _spoken_clips(60)
    clips[3] = (clips[3][0], clips[3][1], "   ", clips[3][3])  # no text: left out
    recordings = longform.long_recordings(iter(clips), count=2, min_seconds=30.0, seed=1)
    assert [r.id for r in recordings] == ["long-00", "long-01"]
    used = [c for c in clips if c[2].strip()]
    k = 0
    for rec in recordings:
        assert rec.seconds >= 30.0 and rec.audio.dtype == np.float32
        n = len(rec.segments)
        part = used[k : k + n]
        assert rec.text == " ".join(t for _, _, t, _ in part)
        assert rec.speakers == [s for _, _, _, s in part]
        assert rec.boundaries() == [t for s in rec.segments for t in (s.start, s.end)]
        for (_, audio, _, _), seg in zip(part, rec.segments):
            clip = longform.trim_silence(audio)
            assert len(clip) == len(audio) - 2 * 800  # 0.1 s of silence less the 50 ms margin, each end
            at = round(seg.start * SR)
            assert np.array_equal(rec.audio[at : at + len(clip)], clip)
        k += n
    assert "Mening nummer 3." not in " ".join(r.text for r in recordings)
    # At most `count`; fewer when the clips run out.
    assert len(longform.long_recordings(iter(clips), count=1, min_seconds=30.0)) == 1
    # Each trimmed clip counts 1.9 s and the shortest pause before it 0.4 s, the leads 0.2 s: 14 make 30 s.
    assert len(longform.long_recordings(iter(clips[:12]), count=5, min_seconds=30.0)) == 0  # 11 with text
    many = longform.long_recordings(iter(clips), count=50, min_seconds=30.0)
    assert len(many) == 4 and all(len(r.segments) == 14 and r.seconds >= 30 for r in many)  # 59 clips with text


def test_long_recordings_are_at_least_min_seconds():
    noise = _sound(35200)  # 2.2 s of sound, no silence to trim: ten clips count exactly 30 s
    clips = [(f"c{i}", noise, f"Mening {i}.", "spk") for i in range(40)]
    lengths = [longform.long_recordings(iter(clips), count=1, min_seconds=30.0, seed=s)[0].seconds for s in range(20)]
    assert min(lengths) >= 30.0, lengths


def test_timestamp_token_counts_20ms_steps_within_30s():
    assert longform.timestamp_token(0.0, 1000) == 1000
    assert longform.timestamp_token(1.24, 1000) == 1062
    assert longform.timestamp_token(30.0, 1000) == 2500
    assert longform.timestamp_token(12.345, 1000) == 1000 + round(12.345 / 0.02)
    for bad in (-0.5, 30.5, 61.0):
        with pytest.raises(ValueError, match="30 s window"):
            longform.timestamp_token(bad, 1000)


def test_timestamp_labels_are_prefix_then_start_text_end_per_segment_then_eot():
    segments = [Segment(0.5, 1.24, "Hej."), Segment(2.0, 3.1, "Då.")]
    labels = longform.timestamp_labels([1, 2, 3], segments, [[10, 11], [12]], timestamp_begin=1000, eot=9)
    assert labels == [1, 2, 3, 1025, 10, 11, 1062, 1100, 12, 1155, 9]
    with pytest.raises(ValueError):
        longform.timestamp_labels([1], segments, [[10]], timestamp_begin=1000, eot=9)


def test_a_stitched_clips_labels_carry_timestamp_tokens_at_the_right_frames():
    from whisper_sv.features.build import load_tokenizer
    from whisper_sv.models.specs import PACKAGED_BASE

    tok = load_tokenizer(PACKAGED_BASE)
    begin = tok.convert_tokens_to_ids("<|0.00|>")
    assert begin == tok.convert_tokens_to_ids("<|notimestamps|>") + 1
    assert tok.decode([longform.timestamp_token(1.24, begin)], decode_with_timestamps=True) == "<|1.24|>"
    assert tok.convert_ids_to_tokens(longform.timestamp_token(30.0, begin)) == "<|30.00|>"

    clips = [(_sound(SR + 320 * i, seed=i), text) for i, text in enumerate(["Hej på dig.", "Vi ses i morgon."])]
    _, segments = longform.stitch(clips, np.random.default_rng(3))
    prefix = tok.prefix_tokens[:-1]  # sot, sv, transcribe: no <|notimestamps|>
    texts = [tok.encode(" " + s.text, add_special_tokens=False) for s in segments]
    labels = longform.timestamp_labels(prefix, segments, texts, begin, tok.eos_token_id)
    stamps = [t for t in labels if t >= begin]
    assert [tok.convert_ids_to_tokens(t) for t in stamps] == [f"<|{t:.2f}|>" for s in segments for t in (s.start, s.end)]
    expected = "<|startoftranscript|><|sv|><|transcribe|>" + "".join(
        f"<|{s.start:.2f}|> {s.text}<|{s.end:.2f}|>" for s in segments) + "<|endoftext|>"
    assert tok.decode(labels, decode_with_timestamps=True) == expected


# ---------------------------------------------------------------------------------------------
# report_card: figures


@pytest.mark.parametrize("text, loop", [
    ("Det är ju en av det. " * 8, True),  # compresses like a loop
    ("Hej och välkommen till kvällens nyheter från Stockholm där vädret har varit ovanligt varmt. "
     + "nej " * 9 + "sade hon och gick hem till sin lägenhet vid torget i den gamla staden.", True),  # 8 repeated words
    ("Hej och välkommen till kvällens nyheter från Stockholm där vädret har varit ovanligt varmt. "
     + "nej " * 8 + "sade hon och gick hem till sin lägenhet vid torget i den gamla staden.", False),  # 7: emphasis
    ("ja ja ja", False),
    ("Ja ja ja, sa hon, och gick sedan hem.", False),
    ("Jag ska inte ringa dig hela tiden.", False),
    ("", False),
    ("   ", False),
])
def test_has_loop(text, loop):
    assert rc.has_loop(text) is loop


def test_timestamp_figures_valid_case_and_boundary_error_by_hand():
    truth = [1.0, 2.0, 3.0, 4.5]
    figures = rc.timestamp_figures([(0.9, 2.1), (3.2, 4.0)], 5.0, truth)
    # |0.9-1.0|, |2.1-2.0|, |3.2-3.0|, |4.0-4.5|
    assert figures["valid"] is True
    assert figures["boundary_error_s"] == pytest.approx((0.1 + 0.1 + 0.2 + 0.5) / 4)
    # Each true boundary to the nearest given: 1.0->0.9, 2.0->2.1, 3.0->3.2, 4.5->4.0.
    assert figures["boundary_miss_s"] == pytest.approx((0.1 + 0.1 + 0.2 + 0.5) / 4)
    # Touching segments, an end within the 20 ms tolerance past the audio: still valid.
    assert rc.timestamp_figures([(0.0, 2.0), (2.0, 5.04)], 5.0, truth)["valid"] is True


@pytest.mark.parametrize("segments", [
    [(0.9, 2.1), (3.2, None)],  # an end missing (the pipeline's last chunk without a timestamp)
    [(None, 2.1)],  # a start missing
    [(0.9, 2.1), (3.2, 5.2)],  # an end past the audio
    [(2.0, 3.0), (1.5, 2.5)],  # a start going back
    [(2.0, 1.0)],  # ends before it starts
    [(-0.5, 1.0)],  # starts before the audio
    [],  # no segments at all
], ids=["no-end", "no-start", "past-audio", "start-back", "end-before-start", "negative", "empty"])
def test_timestamp_figures_invalid(segments):
    assert rc.timestamp_figures(segments, 5.0, [1.0, 2.0, 3.0, 4.5])["valid"] is False


def test_one_segment_per_window_misses_the_sentence_boundaries_it_never_gave():
    """A decoder that gives one segment per 30 s window: its few boundaries sit near true ones (the
    window edges fall in pauses), so only the distance from each true boundary shows what it missed."""
    truth = [0.5, 4.0, 5.0, 9.0, 10.0, 14.0, 15.0, 19.0, 20.0, 24.0, 25.0, 29.5]
    figures = rc.timestamp_figures([(0.5, 29.5)], 30.0, truth)
    assert figures["valid"] is True and figures["boundary_error_s"] == 0
    # 4.0 is 3.5 s from the nearest boundary given, 14.0 is 13.5 s, 15.0 is 14.5 s ...
    expected = sum(min(abs(b - 0.5), abs(b - 29.5)) for b in truth) / len(truth)
    assert figures["boundary_miss_s"] == pytest.approx(expected) and expected > 5


def test_timestamp_figures_measures_the_times_there_are():
    figures = rc.timestamp_figures([(0.9, 2.1), (3.2, None)], 5.0, [1.0, 2.0, 3.0, 4.5])
    assert figures["boundary_error_s"] == pytest.approx((0.1 + 0.1 + 0.2) / 3)
    assert rc.timestamp_figures([], 5.0, [1.0])["boundary_error_s"] is None
    assert rc.timestamp_figures([(0.5, 1.0)], 5.0, [])["boundary_error_s"] is None
    assert rc.timestamp_figures([], 5.0, [1.0])["boundary_miss_s"] is None


@pytest.mark.parametrize("bad", [
    {"clips": 0}, {"longform": 0}, {"other_clips": 0}, {"parity_clips": -1}, {"clips": 4, "parity_clips": 5},
    {"longform_s": 29.0}, {"nonspeech_s": 0.0}, {"nonspeech_s": -1.0},
])
def test_report_card_config_refuses_bad_values(bad):
    with pytest.raises(ValueError):
        rc.ReportCardConfig(model="m", **bad)


def test_report_card_config_scoring_key_leaves_out_where_and_which_model():
    a = rc.ReportCardConfig(model="a", base="b", out="x", clips=4, parity_clips=0)
    b = rc.ReportCardConfig(model="c", base="d", out="y", clips=4, parity_clips=0)
    assert a.scoring_key() == b.scoring_key() and not {"model", "base", "out"} & set(a.scoring_key())
    assert rc.ReportCardConfig(model="a", seed=1).scoring_key() != rc.ReportCardConfig(model="a", seed=2).scoring_key()


# ---------------------------------------------------------------------------------------------
# report_card: the card from hand-made figures


def _figures(target_wer=0.4, with_text=1, fw_wer=0.5, other_wer=0.3, valid=1.0, boundary=0.2, families=("espeak",)):
    def longform_entry(wer, stamps):
        entry = {"wer": wer, "cer": wer / 2, "n": 1, "loop_share": 0.0, "words": 10, "reference_words": 12}
        return entry | ({"timestamps_valid_share": valid, "boundary_error_s": boundary} if stamps else {})

    figures = {
        "model": "m",
        "target": {"wer": target_wer, "wer_ortho": target_wer, "cer": target_wer / 2, "n": 4, "speakers": {},
                   "families": {f: {"wer": target_wer, "cer": 0.1, "n": 4} for f in families}},
        "parity": {"n": 2, "wer_transformers": 0.5, "wer_ct2_int8": 0.5, "identical_share": 1.0},
        "longform": {"app": longform_entry(0.6, False), "faster_whisper": longform_entry(fw_wer, True),
                     "pipeline": longform_entry(0.7, True), "recordings": 1, "seconds": 61.2},
        "nonspeech": {"clips": 17, "with_text": with_text, "with_text_share": with_text / 17, "no_speech_prob_mean": 0.4},
    }
    if other_wer is not None:
        figures["other_language"] = {"wer": other_wer, "cer": 0.1, "n": 2, "language": "en"}
    return figures


def _by_check(rows):
    return {r["check"]: r for r in rows}


def test_checks_met_missed_and_not_measured():
    base, tuned = _figures(), _figures(target_wer=0.1, with_text=2, fw_wer=0.3, other_wer=0.33)
    got = _by_check(rc.checks(base, tuned))
    assert got["target-language WER, tuned/base"]["value"] == pytest.approx(0.25)
    assert got["target-language WER, tuned/base"]["met"] is True
    assert got["long-form WER through faster-whisper's defaults, tuned/base"]["met"] is True  # 0.6 <= 0.75
    assert got["other-language WER, tuned/base"]["met"] is True  # 1.1 <= 1.15
    assert got["non-speech clips with text, tuned minus base"]["value"] == 1
    assert got["non-speech clips with text, tuned minus base"]["met"] is True  # one more: allowed
    assert all(r["met"] is True for r in got.values()), got

    worse = _figures(target_wer=0.3, with_text=3, fw_wer=0.45, other_wer=0.4, valid=0.5, boundary=0.8)
    got = _by_check(rc.checks(base, worse))
    assert got["target-language WER, tuned/base"]["met"] is False  # 0.75 > 0.5
    assert got["long-form WER through faster-whisper's defaults, tuned/base"]["met"] is False  # 0.9
    assert got["other-language WER, tuned/base"]["met"] is False  # 1.33
    assert got["non-speech clips with text, tuned minus base"] == {
        "check": "non-speech clips with text, tuned minus base", "value": 2, "target": "<= 1", "met": False}
    for decoder in ("faster_whisper", "pipeline"):
        assert got[f"long-form timestamps valid ({decoder}, tuned)"]["met"] is False
        assert got[f"mean boundary error, s ({decoder}, tuned)"]["met"] is False
    text = rc.format_checks(rc.checks(base, worse))
    assert "MISSED" in text and text.count("MISSED") == len(got)

    unmeasured = _by_check(rc.checks(_figures(other_wer=None), _figures(other_wer=None, boundary=None)))
    for name in ("other-language WER, tuned/base",
                 "mean boundary error, s (faster_whisper, tuned)", "mean boundary error, s (pipeline, tuned)"):
        assert unmeasured[name]["value"] is None and unmeasured[name]["met"] is None, name
    assert "not measured" in rc.format_checks(list(unmeasured.values()))


def test_flat_rows_one_row_a_figure_with_the_ratio():
    base, tuned = _figures(families=("espeak", "mbrola")), _figures(target_wer=0.2, with_text=3, other_wer=None,
                                                                  families=("espeak", "mbrola"))
    base["other_language"]["wer"] = 0.3
    rows = rc.flat_rows(base, tuned)
    by = {(r["section"], r["metric"]): r for r in rows}
    assert by[("target", "wer")] == {"section": "target", "metric": "wer", "base": 0.4, "tuned": 0.2, "ratio": 0.5}
    assert by[("target espeak", "wer")]["ratio"] == 0.5 and ("target mbrola", "wer") in by
    assert by[("non-speech", "with_text")] == {"section": "non-speech", "metric": "with_text", "base": 1, "tuned": 3,
                                               "ratio": 3.0}
    assert by[("other language", "wer")]["tuned"] is None and by[("other language", "wer")]["ratio"] is None
    # The app decodes without timestamps: no timestamp rows for it; both other decoders have them.
    assert ("long-form app", "boundary_error_s") not in by and ("long-form app", "wer") in by
    for decoder in ("faster_whisper", "pipeline"):
        metrics = ("wer", "loop_share", "timestamps_valid_share", "boundary_error_s")
        assert {("long-form " + decoder, k) for k in metrics} <= set(by)
    assert by[("long-form pipeline", "loop_share")]["ratio"] is None  # base 0: no ratio
    sections = [r["section"] for r in rows]
    order = [sections.index(s) for s in ("target", "parity", "long-form app", "non-speech", "other language")]
    assert order == sorted(order)
    # Figures neither model has are left out.
    del base["other_language"]
    assert ("other language", "wer") not in {(r["section"], r["metric"]) for r in rc.flat_rows(base, tuned)}


def _card(base=None, tuned=None):
    base, tuned = base or _figures(), tuned or _figures(target_wer=0.2, with_text=4)
    cfg = rc.ReportCardConfig(model="runs/x/final", base="packaged:whisper-base", clips=4, parity_clips=2)
    from dataclasses import asdict

    return {"config": asdict(cfg), "base": base, "tuned": tuned, "rows": rc.flat_rows(base, tuned),
            "checks": rc.checks(base, tuned)}


def test_markdown_has_the_table_a_row_per_figure_and_the_checks():
    card = _card()
    text = rc.markdown(card)
    lines = text.splitlines()
    header = lines.index("| section | metric | base | tuned | tuned/base |")
    assert lines[header + 1] == "|---|---|---:|---:|---:|"
    table = []
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        table.append(line)
    assert len(table) == len(card["rows"])
    for line, row in zip(table, card["rows"]):
        assert line.startswith(f"| {row['section']} | {row['metric']} |"), (line, row)
    assert "| target | wer | 40.0 % | 20.0 % | 0.50 |" in table
    assert "| non-speech | with_text | 1 | 4 | 4.00 |" in table
    assert "| long-form faster_whisper | boundary_error_s | 0.20 s | 0.20 s | 1.00 |" in table
    assert "- MISSED       non-speech clips with text, tuned minus base: 3 (target <= 1)" in lines
    assert "`packaged:whisper-base`" in text and "en clips with that language forced" in text
    plain = rc.format_rows(card["rows"]).splitlines()
    assert len(plain) == len(card["rows"]) + 1


def test_draw_writes_a_png(tmp_path):
    from PIL import Image

    card = _card()
    out = rc.draw(card, tmp_path / "card.png")
    data = (tmp_path / "card.png").read_bytes()
    assert data[:8] == PNG_MAGIC
    with Image.open(tmp_path / "card.png") as image:
        image.verify()
    with Image.open(tmp_path / "card.png") as image:
        assert image.size == (1500, 420)
    assert out == tmp_path / "card.png"
    # Figures a model lacks (no other language, no boundary error) are drawn as gaps, not errors.
    sparse = _card(_figures(other_wer=None, boundary=None), _figures(other_wer=None, boundary=None))
    rc.draw(sparse, tmp_path / "sparse.png")
    assert (tmp_path / "sparse.png").read_bytes()[:8] == PNG_MAGIC


# ---------------------------------------------------------------------------------------------
# report_card end to end


def test_new_weights_in_the_same_folder_are_scored_anew(tmp_path):
    import torch
    from transformers import WhisperForConditionalGeneration

    folder = stopping_tiny(tmp_path / "tuned", seed=1)
    first = rc.ModelUnderTest(str(folder), tmp_path / "out")
    assert (first.ct2_dir / "model.bin").is_file()
    before = first.fingerprint()
    model = WhisperForConditionalGeneration.from_pretrained(folder)  # training went on: new weights
    with torch.no_grad():
        model.model.decoder.layer_norm.weight.mul_(2.0)
    model.save_pretrained(folder)
    assert rc.ModelUnderTest(str(folder), tmp_path / "out").fingerprint() != before


@pytest.mark.slow
def test_report_card_end_to_end_on_tiny_models(tmp_path, capsys):
    from PIL import Image

    from whisper_sv.synth.corpus import SynthConfig, synthesize

    sv = synthesize(tmp_path / "sv", SynthConfig(clips=60, seed=3, voices="espeak", realism=False,
                                                 splits={"train": 0.3, "dev": 0.1, "test": 0.6}), workers=2)
    en = synthesize(tmp_path / "en", SynthConfig(language="en", clips=6, seed=3, voices="espeak", realism=False,
                                                 splits={"train": 0.34, "dev": 0.33, "test": 0.33}), workers=2)
    base, tuned = stopping_tiny(tmp_path / "base", seed=0), stopping_tiny(tmp_path / "tuned", seed=1)
    out = tmp_path / "card"
    cfg = rc.ReportCardConfig(model=str(tuned), base=str(base), data=str(sv), other_data=str(en), clips=4,
                              parity_clips=2, longform=1, longform_s=30, nonspeech_s=2, other_clips=2, out=str(out))
    card = rc.report_card(cfg)
    first = capsys.readouterr().out
    assert first.count("report card: scoring") == 2 and "figures from" not in first, first

    for suffix in ("json", "csv", "png", "md"):
        assert (out / f"report_card.{suffix}").is_file(), suffix
    saved = json.loads((out / "report_card.json").read_text(encoding="utf-8"))
    assert saved["config"]["model"] == str(tuned) and saved["config"]["base"] == str(base)
    for name in ("base", "tuned"):
        figures = saved[name]
        assert {"target", "parity", "longform", "nonspeech", "other_language"} <= set(figures), name
        assert "utterances" not in figures and "key" not in figures  # transcripts stay in out/<model>.json
        assert figures["target"]["n"] == 4 and 0 <= figures["target"]["wer"]
        assert figures["parity"]["n"] == 2 and 0 <= figures["parity"]["identical_share"] <= 1
        lf = figures["longform"]
        assert lf["recordings"] == 1 and lf["seconds"] >= 30
        for decoder in ("app", "faster_whisper", "pipeline"):
            assert {"wer", "cer", "loop_share", "words", "reference_words", "words_share"} <= set(lf[decoder]), decoder
            assert lf[decoder]["words_share"] == lf[decoder]["words"] / lf[decoder]["reference_words"]
            assert "outputs" not in lf[decoder]
        for decoder in ("faster_whisper", "pipeline"):
            assert 0 <= lf[decoder]["timestamps_valid_share"] <= 1 and {"boundary_error_s", "boundary_miss_s"} <= set(lf[decoder])
        assert "timestamps_valid_share" not in lf["app"]
        ns = figures["nonspeech"]
        assert list(ns["per_clip"]) == list(nonspeech.KINDS) and ns["clips"] == len(nonspeech.KINDS)
        assert all(0 <= c["no_speech_prob"] <= 1 for c in ns["per_clip"].values())
        assert figures["other_language"]["language"] == "en" and figures["other_language"]["n"] == 2
    assert saved["rows"] == card["rows"] and len(saved["rows"]) >= 20
    assert [c["check"] for c in saved["checks"]] == [c["check"] for c in rc.checks(card["base"], card["tuned"])]
    assert len(saved["checks"]) == 8 and all(c["met"] in (True, False, None) for c in saved["checks"])
    with (out / "report_card.csv").open(encoding="utf-8", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["section"], r["metric"]) for r in table] == [(r["section"], r["metric"]) for r in card["rows"]]
    markdown = (out / "report_card.md").read_text(encoding="utf-8")
    assert "| section | metric | base | tuned | tuned/base |" in markdown
    assert sum(line.startswith("| ") for line in markdown.splitlines()) == len(card["rows"]) + 1
    with Image.open(out / "report_card.png") as image:
        image.verify()
    # Each model's figures, transcripts included, are kept for the next run.
    cached = {spec: out / f"{rc._slug(spec)}.json" for spec in (str(base), str(tuned))}
    for spec, path in cached.items():
        kept = json.loads(path.read_text(encoding="utf-8"))
        assert kept["model"] == spec and len(kept["utterances"]) == 4
        assert set(kept["longform"]["pipeline"]["outputs"][0]) == {"text", "segments"}
    stamps = {spec: path.stat().st_mtime_ns for spec, path in cached.items()}

    again = rc.report_card(cfg)
    second = capsys.readouterr().out
    assert second.count("figures from") == 2 and "report card: scoring" not in second, second
    assert {spec: path.stat().st_mtime_ns for spec, path in cached.items()} == stamps
    assert again["rows"] == card["rows"]


def test_the_model_card_gets_the_section_once_and_the_wers_users_see(tmp_path):
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    eval_wer = EvalResult(task_type="automatic-speech-recognition", dataset_type="features/dev", dataset_name="dev",
                          metric_type="wer", metric_value=41.0)
    data = ModelCardData(language="sv", model_name="run", eval_results=[eval_wer])
    (tmp_path / "README.md").write_text(f"---\n{data.to_yaml()}\n---\n\n# run\n\nTrained.\n")
    card = _card()
    for _ in range(2):  # a second card replaces the first, it does not pile up
        rc.write_card_section(tmp_path, card)
    written = ModelCard.load(tmp_path / "README.md")
    assert written.text.count(rc.CARD_HEADING) == 1 and "Trained." in written.text
    results = {r.dataset_type: r.metric_value for r in written.data.eval_results}
    assert results.pop("features/dev") == 41.0  # the training's own evaluation is kept
    tuned = card["tuned"]
    assert results == {
        "whisper-sv-report-card/long-form-faster-whisper": round(100 * tuned["longform"]["faster_whisper"]["wer"], 2),
        "whisper-sv-report-card/long-form-pipeline": round(100 * tuned["longform"]["pipeline"]["wer"], 2),
        f"whisper-sv-report-card/other-language-{card['config']['other_language']}": round(100 * tuned["other_language"]["wer"], 2),
    }
    assert rc.write_card_section(tmp_path / "no-card", card) is None
