import shutil

import numpy as np
import pytest
import soundfile as sf

from whisper_sv.data.sources import CV_HEADER, iter_clips, iter_examples, parse_source


def _cv_folder(tmp_path, sv_corpus, rows, header=CV_HEADER):
    """A Common Voice folder whose test.tsv holds `rows` (dicts over the header) verbatim."""
    folder = tmp_path / "cv"
    shutil.copytree(sv_corpus / "clips", folder / "clips")
    lines = ["\t".join(header)] + ["\t".join(r.get(c, "") for c in header) for r in rows]
    (folder / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_real_header_and_stray_quotes_survive(tmp_path, sv_corpus):
    clip = sorted((sv_corpus / "clips").iterdir())[0].name
    quoted = '"Jaså, står det till på det viset", tänkte gåskarlen.'
    half = 'Han sa "hej och gick.'  # an unbalanced quote would swallow lines with the default dialect
    folder = _cv_folder(tmp_path, sv_corpus, [
        {"client_id": "x", "path": clip, "sentence": quoted, "locale": "sv-SE"},
        {"client_id": "y", "path": clip, "sentence": half, "locale": "sv-SE"},
        {"client_id": "z", "path": clip, "sentence": "Sista raden.", "locale": "sv-SE"},
    ])
    rows = list(iter_examples(f"cv:{folder}", "test"))
    assert [r.sentence for r in rows] == [quoted, half, "Sista raden."]
    clips = list(iter_clips(f"cv:{folder}", "test"))
    assert all(c.error is None and c.audio.dtype == np.float32 and c.duration > 0.3 for c in clips)


def test_broken_rows_and_bad_clips_are_reported_not_fatal(tmp_path, sv_corpus, caplog):
    good = sorted((sv_corpus / "clips").iterdir())[0].name
    folder = _cv_folder(tmp_path, sv_corpus, [
        {"path": good, "sentence": "Bra."},
        {"path": "missing.mp3", "sentence": "Finns inte."},
        {"path": "corrupt.mp3", "sentence": "Trasig."},
        {"path": "empty.wav", "sentence": "Tom."},
    ])
    (folder / "clips" / "corrupt.mp3").write_bytes(b"ID3 this is not audio at all" * 10)
    sf.write(folder / "clips" / "empty.wav", np.zeros(0, np.float32), 16000)
    with (folder / "test.tsv").open("a") as f:
        f.write("only\ttwo fields\n")
    clips = list(iter_clips(f"cv:{folder}", "test"))
    assert [c.id for c in clips] == [good, "missing.mp3", "corrupt.mp3", "empty.wav", "test.tsv:6"]
    assert clips[0].error is None
    assert clips[1].error.startswith("missing") and "missing.mp3" in clips[1].error
    assert clips[2].error.startswith("undecodable") and "corrupt.mp3" in clips[2].error
    assert clips[3].error.startswith("empty")
    assert clips[4].error.startswith("bad_row") and "2 fields, expected 13" in clips[4].error  # a reject, with its line
    assert "row skipped" in caplog.text


def test_missing_split_and_header_say_what_to_do(tmp_path, sv_corpus):
    with pytest.raises(FileNotFoundError, match="pass --split"):
        list(iter_examples(f"cv:{sv_corpus}", "nosuchsplit"))
    folder = _cv_folder(tmp_path, sv_corpus, [{"path": "a.mp3"}], header=["client_id", "path", "text"])
    with pytest.raises(ValueError, match="needs the columns"):
        list(iter_examples(f"cv:{folder}", "test"))


def test_parse_source():
    assert parse_source("cv:/data/cv-corpus-sv") == ("cv", "/data/cv-corpus-sv", None)
    assert parse_source("hf:google/fleurs:sv_se") == ("hf", "google/fleurs", "sv_se")
    assert parse_source("hf:KTH/nst") == ("hf", "KTH/nst", None)
    with pytest.raises(ValueError, match="cv:PATH"):
        parse_source("somewhere")


def _parquet_dataset(tmp_path, sv_corpus, text_column="transcription", **columns):
    import datasets

    clips = sorted((sv_corpus / "clips").iterdir())[:3]
    ds = datasets.Dataset.from_dict({
        "id": ["a", "b", "c"],
        "audio": [{"bytes": p.read_bytes(), "path": p.name} for p in clips],
        text_column: ["En.", "Två.", "Tre."],
        **columns,
    }).cast_column("audio", datasets.Audio())
    (tmp_path / "hf" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "hf" / "data" / "test-00000-of-00001.parquet"))
    return tmp_path / "hf", clips


def test_hub_source_streams_local_parquet(tmp_path, sv_corpus):
    folder, clips = _parquet_dataset(tmp_path, sv_corpus)
    got = list(iter_clips(f"hf:{folder}", "test"))
    assert [c.sentence for c in got] == ["En.", "Två.", "Tre."]
    assert [c.id for c in got] == [p.name for p in clips]
    from whisper_sv.audio.io import load_audio

    np.testing.assert_array_equal(got[0].audio, load_audio(clips[0]))
    assert [c.speaker for c in got] == ["", "", ""]  # no speaker column: unknown


@pytest.mark.parametrize("column", ["client_id", "speaker_id"])
def test_hub_source_names_the_speaker(tmp_path, sv_corpus, column):
    folder, _ = _parquet_dataset(tmp_path, sv_corpus, **{column: ["ab" * 32, "", "7"]})
    assert [e.speaker for e in iter_examples(f"hf:{folder}", "test")] == ["ab" * 32, "", "7"]


def test_hub_source_unknown_columns_say_which_flag(tmp_path, sv_corpus):
    folder, _ = _parquet_dataset(tmp_path, sv_corpus, text_column="words")
    with pytest.raises(ValueError, match="--text-column"):
        list(iter_examples(f"hf:{folder}", "test"))
    with pytest.raises(ValueError, match="--audio-column"):
        list(iter_examples(f"hf:{folder}", "test", audio_column="speech", text_column="words"))
