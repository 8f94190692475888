"""evaluate (report + CSV, same numbers from a store and from audio) and the CTranslate2 export."""

import csv
import json

import numpy as np
import pytest

from whisper_sv.models import PACKAGED_BASE


@pytest.mark.slow
def test_evaluate_store_and_source_agree_and_write_report(sv_corpus, sv_stores, tmp_path):
    from whisper_sv.evaluate import evaluate

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

    from whisper_sv.audio import N_SAMPLES
    from whisper_sv.decoding import generate_texts
    from whisper_sv.export import export_ct2
    from whisper_sv.logmel import log_mel, pad_features
    from whisper_sv.models import load_model
    from whisper_sv.sources import iter_clips

    out = export_ct2(PACKAGED_BASE, tmp_path / "ct2", quantization="float32")
    for name in ("model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"):
        assert (out / name).is_file(), name
    assert export_ct2(PACKAGED_BASE, out) == out  # an existing export is kept, not redone

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
    from whisper_sv.export import export_ct2

    with pytest.raises(ValueError, match="quantization"):
        export_ct2(PACKAGED_BASE, tmp_path / "x", quantization="int3")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an export"):
        export_ct2(PACKAGED_BASE, tmp_path / "busy")
