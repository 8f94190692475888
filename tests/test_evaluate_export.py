"""evaluate (report + CSV, same numbers from a store and from audio) and the CTranslate2 export."""

import csv
import json

import numpy as np
import pytest

from whisper_sv.data.sources import iter_common_voice
from whisper_sv.models.specs import PACKAGED_BASE


@pytest.mark.slow
def test_evaluate_store_and_source_agree_and_write_report(sv_corpus, sv_stores, tmp_path):
    from whisper_sv.evaluation.evaluate import evaluate

    from_audio = evaluate(PACKAGED_BASE, f"cv:{sv_corpus}", "dev", out=tmp_path / "audio.json", batch_size=3)
    from_store = evaluate(PACKAGED_BASE, str(sv_stores["dev"]), "dev", out=tmp_path / "store.json", batch_size=4)
    report = json.loads((tmp_path / "audio.json").read_text())
    assert {"wer", "wer_ortho", "cer", "n", "model", "data", "split"} <= set(report)
    assert report["n"] == 6 and report["model"] == PACKAGED_BASE and 0 <= report["wer"] <= report["wer_ortho"] + 1e-9
    rows = list(csv.DictReader((tmp_path / "audio.csv").open(encoding="utf-8")))
    assert len(rows) == 6 and all(r["reference"] and r["reference_norm"] for r in rows)
    # The store holds fp16 features of the same clips: the transcripts barely move, if at all.
    store_rows = {r["id"]: r["hypothesis"] for r in csv.DictReader((tmp_path / "store.csv").open(encoding="utf-8"))}
    same = sum(store_rows[r["id"]] == r["hypothesis"] for r in rows)
    assert same >= 5, (same, rows, store_rows)
    assert abs(from_audio["wer"] - from_store["wer"]) <= 0.1
    assert from_audio["cer"] < 0.75, "the packaged base should understand some synthetic Swedish"


@pytest.mark.slow
def test_export_transcribes_like_the_source_model(sv_corpus, tmp_path):
    from faster_whisper import WhisperModel

    from whisper_sv.audio.io import N_SAMPLES
    from whisper_sv.audio.logmel import log_mel, pad_features
    from whisper_sv.data.sources import iter_clips
    from whisper_sv.models.decoding import generate_texts
    from whisper_sv.models.specs import load_model
    from whisper_sv.serving.export import export_ct2

    out = export_ct2(PACKAGED_BASE, tmp_path / "ct2", quantization="float32")
    for name in ("model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"):
        assert (out / name).is_file(), name
    assert export_ct2(PACKAGED_BASE, out, quantization="float32") == out  # an existing export is kept, not redone

    clips = [c for c in iter_clips(f"cv:{sv_corpus}", "test")][:4]
    # faster-whisper zero-pads the log-mel while Transformers pads the audio; pad the audio to
    # 30 s on both sides so the two see the same features (see test_packaged.py).
    audios = [np.pad(c.audio, (0, N_SAMPLES - len(c.audio))) for c in clips]
    model, processor = load_model(PACKAGED_BASE)
    feats = np.stack([pad_features(*log_mel(a)) for a in audios])
    ours = generate_texts(model, processor, feats)
    fw = WhisperModel(str(out), device="cpu", compute_type="float32")
    theirs = []
    for audio in audios:
        segments, _ = fw.transcribe(
            audio, language="sv", beam_size=1, temperature=0.0, without_timestamps=True,
            condition_on_previous_text=False, no_speech_threshold=None, vad_filter=False,
        )
        theirs.append(" ".join(s.text.strip() for s in segments).strip())
    matches = sum(a.split() == b.split() for a, b in zip(ours, theirs))
    assert matches >= 3, list(zip(ours, theirs))


def test_export_refuses_unknown_quantization_and_foreign_folders(tmp_path):
    from whisper_sv.serving.export import export_ct2

    with pytest.raises(ValueError, match="quantization"):
        export_ct2(PACKAGED_BASE, tmp_path / "x", quantization="int3")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an export"):
        export_ct2(PACKAGED_BASE, tmp_path / "busy")


def test_an_export_of_weights_trained_again_is_redone_and_one_of_another_model_refused(tmp_path, capsys):
    """make demo exports final/ after every training: an export of the old weights must not be served."""
    import os
    import shutil

    from whisper_sv.common.errors import UserError
    from whisper_sv.models.specs import random_tiny_dir
    from whisper_sv.serving.export import export_ct2

    final = tmp_path / "final"
    shutil.copytree(random_tiny_dir(), final)
    out = export_ct2(str(final), tmp_path / "ct2")
    first = (out / "whisper_sv_export.json").read_text()
    assert export_ct2(str(final), out) == out and "already holds this export" in capsys.readouterr().out
    weights = final / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # training wrote it again
    export_ct2(str(final), out)
    assert "older weights" in capsys.readouterr().out
    assert (out / "whisper_sv_export.json").read_text() != first  # the new weights' fingerprint
    with pytest.raises(UserError, match="holds an export of .*final .*int8.*, not packaged:whisper-base"):
        export_ct2(PACKAGED_BASE, out)


# ---------------------------------------------------------------------------------------------
# Per speaker and per voice family.


def test_per_speaker_and_per_family_counts_add_up_to_the_totals():
    from whisper_sv.common.metrics import wer_report
    from whisper_sv.evaluation.evaluate import score

    cv_speaker = "3f" * 64  # a Common Voice client_id: a hex hash
    rows = [
        {"id": "a", "speaker": "espeak-sv-m1", "reference": "Får jag, sa hon?", "hypothesis": "far jag sa hon"},
        {"id": "b", "speaker": "espeak-sv-f2", "reference": "Det är bra.", "hypothesis": "det e bra"},
        {"id": "c", "speaker": "mbrola-sw1", "reference": "Ett två tre fyra.", "hypothesis": "ett två tre fyra fem"},
        {"id": "d", "speaker": "mbrola-sw1", "reference": "Hej!", "hypothesis": ""},
        {"id": "e", "speaker": cv_speaker, "reference": "Vi ses i morgon.", "hypothesis": "vi ses i morgon"},
        {"id": "f", "speaker": "", "reference": "...", "hypothesis": "brus"},  # empty once normalised: not scored
        {"id": "g", "speaker": "", "reference": "Han läser en bok.", "hypothesis": "han läste en bok"},
    ]
    report = score(rows)
    assert {k: report[k] for k in ("wer", "cer", "n")} == {k: v for k, v in wer_report(
        [r["reference"] for r in rows], [r["hypothesis"] for r in rows]).items() if k != "wer_ortho"}
    assert report["wer"] == report["word_errors"] / report["words"] and report["cer"] == report["char_errors"] / report["chars"]
    assert set(report["speakers"]) == {"espeak-sv-m1", "espeak-sv-f2", "mbrola-sw1", cv_speaker, ""}
    assert {s: g["family"] for s, g in report["speakers"].items()} == {
        "espeak-sv-m1": "espeak", "espeak-sv-f2": "espeak", "mbrola-sw1": "mbrola", cv_speaker: "cv", "": ""}
    assert set(report["families"]) == {"espeak", "mbrola", "cv", ""}
    for groups in (report["speakers"], report["families"]):
        for key in ("word_errors", "words", "char_errors", "chars", "n"):
            assert sum(g[key] for g in groups.values()) == report[key if key != "n" else "n"], key
        for g in groups.values():
            assert g["wer"] == g["word_errors"] / g["words"]
    assert report["speakers"]["mbrola-sw1"]["n"] == 2 and report["families"]["espeak"]["words"] == 7


def test_an_old_format_store_evaluates_with_speaker_unknown(sv_corpus, tmp_path):
    """A store written before the speaker column (format 2) evaluates, every clip under speaker "";
    today's store of the same clips names the espeak speakers."""
    import dataclasses

    from whisper_sv.data.feature_config import FeatureConfig
    from whisper_sv.data.feature_store import FeatureStore
    from whisper_sv.evaluation.evaluate import evaluate, iter_inputs
    from whisper_sv.features.build import build_features
    from whisper_sv.models.specs import RANDOM_TINY

    config = FeatureConfig(model=PACKAGED_BASE, shard_size=4)
    for version in (2, 3):
        store = tmp_path / f"v{version}"
        build_features(f"cv:{sv_corpus}", "test", store, dataclasses.replace(config, format_version=version), workers=1, progress=False)
        assert FeatureStore(store).config.format_version == version
    report = evaluate(RANDOM_TINY, str(tmp_path / "v2"), out=tmp_path / "v2.json", batch_size=6, device="cpu")
    assert list(report["speakers"]) == [""] and report["speakers"][""]["n"] == report["n"] == 6
    assert list(report["families"]) == [""] and report["families"][""]["words"] == report["words"] > 0
    assert [r["speaker"] for r in csv.DictReader((tmp_path / "v2.csv").open(encoding="utf-8"))] == [""] * 6
    speakers = [speaker for *_, speaker in iter_inputs(str(tmp_path / "v3"), "test", 80, [])]
    planned = {r.id: r.speaker for r in iter_common_voice(sv_corpus, "test")}
    assert speakers == list(planned.values()) and all(s.startswith("espeak-sv") for s in speakers)


def test_a_model_is_scored_and_exported_with_the_window_it_was_trained_on(sv_stores, tmp_path, monkeypatch):
    """A model fine-tuned on 15 s windows (encoder_window.py) is scored on 15 s windows unless told
    otherwise, each batch as wide as the app's backend would encode it, and its export says so."""
    import whisper_sv.evaluation.evaluate as evaluate_module
    from whisper_sv.models.encoder_window import record_window
    from whisper_sv.models.specs import RANDOM_TINY, load_model
    from whisper_sv.serving.export import export_ct2

    model, processor = load_model(RANDOM_TINY)
    record_window(model, 15)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    processor.feature_extractor.save_pretrained(folder)
    widths = []
    real = evaluate_module.generate_texts

    def spy(net, proc, features, *args):
        widths.append(features.shape[-1])
        return real(net, proc, features, *args)

    monkeypatch.setattr(evaluate_module, "generate_texts", spy)
    trained = evaluate_module.evaluate(str(folder), str(sv_stores["dev"]), batch_size=3, device="cpu")
    assert trained["window_s"] == 15 and widths == [1500, 1500]  # the dev clips are all under 14 s
    widths.clear()
    assert evaluate_module.evaluate(str(folder), str(sv_stores["dev"]), batch_size=3, device="cpu", window_s=30)["window_s"] == 30
    assert widths == [3000, 3000]
    widths.clear()
    assert evaluate_module.evaluate(RANDOM_TINY, str(sv_stores["dev"]), batch_size=6, device="cpu")["window_s"] == 30
    with pytest.raises(ValueError, match="use 1 to 30 s"):
        evaluate_module.evaluate(RANDOM_TINY, str(sv_stores["dev"]), window_s=40)
    out = export_ct2(str(folder), tmp_path / "ct2")
    assert json.loads((out / "whisper_sv_export.json").read_text())["window_s"] == 15
