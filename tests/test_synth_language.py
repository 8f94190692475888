"""The synthetic corpus in another language than Swedish: English ships (sentences and voices), any
other language espeak-ng speaks works with its espeak voices and the user's sentences, and a
Swedish corpus is what it always was."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from whisper_sv import cli
from whisper_sv.data import voices
from whisper_sv.data.sources import iter_common_voice
from whisper_sv.data.voices import VOICES_BY_ID, families, missing_voices, speak, speaker_from_client_id, voice_family
from whisper_sv.synth.corpus import SHIPPED, SynthConfig, corpus_record, plan_corpus, read_sentences, synthesize

EN_SENTENCES = read_sentences(SHIPPED / "en_sentences.txt")
SV_SENTENCES = read_sentences(SHIPPED / "sv_sentences.txt")
EN_MBROLA = ("us1", "us2", "us3", "en1")


def _mbrola_installed(databases) -> bool:
    """Whether the MBROLA program and these databases are on this machine (asked of the system,
    not of whisper_sv, so a broken voice table fails the tests rather than skipping them)."""
    return shutil.which("mbrola") is not None and all(Path(f"/usr/share/mbrola/{n}/{n}").exists() for n in databases)


# As for the Swedish voices (test_synth.py): `make setup` installs them, and CI sets
# WHISPER_SV_REQUIRE_MBROLA so that a setup that could not install them fails instead of skipping.
NEEDS_ENGLISH_MBROLA = pytest.mark.skipif(
    not _mbrola_installed(EN_MBROLA) and not os.environ.get("WHISPER_SV_REQUIRE_MBROLA"),
    reason="MBROLA's English voices are not installed (`make setup` installs them: Debian contrib/non-free, Ubuntu multiverse)",
)


def test_the_english_sentences_ship_and_are_plain():
    assert 2500 <= len(EN_SENTENCES) <= 3500 and len(set(EN_SENTENCES)) == len(EN_SENTENCES)
    assert all(s.isascii() and 4 <= len(s.split()) <= 20 for s in EN_SENTENCES)
    assert not set(EN_SENTENCES) & set(SV_SENTENCES)


def test_an_english_corpus_from_the_command_line(tmp_path):
    out = tmp_path / "en"
    assert cli.main(["synth", "--out", str(out), "--language", "en", "--clips", "8", "--seed", "3",
                     "--voices", "espeak", "--realism", "false", "--workers", "1"]) == 0
    record = json.loads((out / "synth.json").read_text())
    assert (record["language"], record["sentences"]) == ("en", "data/en_sentences.txt")
    assert "voices" not in record  # espeak alone, recorded as for a Swedish corpus: by leaving it out
    rows = list(iter_common_voice(out, "validated"))
    assert len(rows) == 8 and {r.sentence for r in rows} <= set(EN_SENTENCES)
    assert all(r.speaker.startswith("espeak-en") and voice_family(r.speaker) == "espeak" for r in rows), [r.speaker for r in rows]
    assert all(r.id.startswith("common_voice_en_") and (out / "clips" / r.id).is_file() for r in rows)
    lines = (out / "train.tsv").read_text().splitlines()
    locale = lines[0].split("\t").index("locale")
    assert {line.split("\t")[locale] for line in lines[1:]} == {"en"}
    assert "English" in (out / "README.md").read_text()
    # The same config again is the same corpus (resumed and skipped); Swedish in that folder is another.
    assert synthesize(out, SynthConfig(clips=8, seed=3, language="en", voices="espeak", realism=False)) == out
    with pytest.raises(ValueError, match="pick another --out"):
        synthesize(out, SynthConfig(clips=8, seed=3, voices="espeak", realism=False))


@NEEDS_ENGLISH_MBROLA
@pytest.mark.parametrize("speaker", [f"mbrola-{n}" for n in EN_MBROLA])
def test_the_english_mbrola_voices_speak_english(speaker):
    voice = VOICES_BY_ID[speaker]
    listed = subprocess.run(["espeak-ng", "--voices=en"], capture_output=True, text=True, check=True).stdout
    assert any(line.split()[1].startswith("en") and f"mb/{voice.espeak_name}" in line.split()
               for line in listed.splitlines()[1:]), listed
    audio, rate = speak(voice, "I shall not call you all the time.", 150, 50)
    assert rate == 16000 and audio.dtype == np.float32
    assert 1.0 < len(audio) / rate < 5.0 and np.abs(audio).max() > 0.05  # a spoken sentence, not silence
    assert missing_voices(("mbrola",), "en") == []


@NEEDS_ENGLISH_MBROLA
def test_an_english_corpus_with_mbrola_voices(tmp_path):
    # Seed 4 gives the held-out speaker a test clip and every English MBROLA voice a clip.
    cfg = SynthConfig(clips=12, seed=4, splits={"train": 0.5, "dev": 0.1, "test": 0.4}, language="en",
                      voices="mbrola,espeak", holdout_speakers="mbrola-us2", realism=True)
    out = synthesize(tmp_path / "en", cfg, workers=2)
    rows = {split: list(iter_common_voice(out, split)) for split in ("train", "dev", "test")}
    speakers = {r.speaker for split in rows.values() for r in split}
    english = {v.id for voices_ in families("en").values() for v in voices_}
    assert speakers <= english and {voice_family(s) for s in speakers} == {"espeak", "mbrola"}, speakers
    assert {f"mbrola-{n}" for n in EN_MBROLA} <= speakers and "mbrola-us2" in {r.speaker for r in rows["test"]}
    assert "mbrola-us2" not in {r.speaker for split in ("train", "dev") for r in rows[split]}
    assert {r.sentence for split in rows.values() for r in split} <= set(EN_SENTENCES)
    assert json.loads((out / "synth.json").read_text())["language"] == "en"
    assert "us1/us2/us3/en1" in (out / "README.md").read_text()  # the voices' terms travel with the clips


def test_speaker_ids_are_unique_across_languages_and_read_back():
    sv, en = families("sv"), families("en")
    assert [v.id for v in sv["mbrola"]] == ["mbrola-sw1", "mbrola-sw2"] and sv["espeak"][1].id == "espeak-sv-m1"
    assert [v.id for v in en["mbrola"]] == ["mbrola-us1", "mbrola-us2", "mbrola-us3", "mbrola-en1"]
    assert en["espeak"][0].id == "espeak-en" and en["espeak"][1].espeak_name == "en+m1"
    every = [v for table in (sv, en) for voices_ in table.values() for v in voices_]
    assert len({v.id for v in every}) == len({v.client_id for v in every}) == len(every) == len(VOICES_BY_ID)
    for v in every:
        assert speaker_from_client_id(v.client_id) == v.id and voice_family(v.id) == v.family


def test_the_swedish_default_is_the_corpus_it_was():
    default = SynthConfig(voices="espeak")
    assert default == SynthConfig(voices="espeak", language="sv", sentences="data/sv_sentences.txt")
    record = corpus_record(default)
    assert "language" not in record and record["sentences"] == "data/sv_sentences.txt"
    assert all(j.locale == "sv-SE" and j.voice.id.startswith("espeak-sv") for j in plan_corpus(SynthConfig(clips=8, seed=3, voices="espeak")))
    with pytest.raises(ValueError, match="unknown speaker"):  # a Swedish corpus has no English speakers
        SynthConfig(holdout_speakers="mbrola-us1")
    with pytest.raises(ValueError, match="unknown speaker"):
        SynthConfig(language="en", holdout_speakers="mbrola-sw2")


def test_an_unknown_language_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(ValueError, match="espeak-ng --voices"):
        SynthConfig(language="xx")
    assert cli.main(["synth", "--out", str(tmp_path / "c"), "--clips", "8", "--language", "klingon"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "klingon" in err and "espeak-ng --voices" in err, err
    assert not (tmp_path / "c").exists()


def test_another_espeak_language_speaks_with_its_espeak_voices(tmp_path, capsys):
    if "de" not in voices.espeak_languages():
        pytest.skip("this espeak-ng has no German voice")
    with pytest.raises(ValueError, match="no sentences ship"):
        SynthConfig(language="de")
    sentences = tmp_path / "de.txt"
    sentences.write_text("Guten Morgen, wie geht es dir?\nDas Wetter ist heute schön.\nIch habe keine Zeit.\nWir sehen uns morgen.\n")
    with pytest.raises(ValueError, match="no MBROLA voices"):
        SynthConfig(clips=4, language="de", sentences=str(sentences), voices="espeak,mbrola")
    voices.available_families.cache_clear()
    cfg = SynthConfig(clips=4, language="de", sentences=str(sentences))
    assert cfg.voices == "espeak" and len(capsys.readouterr().out.strip().splitlines()) == 1  # auto: espeak, said in one line
    out = synthesize(tmp_path / "de", cfg, workers=1)
    rows = list(iter_common_voice(out, "validated"))
    assert all(r.speaker.startswith("espeak-de") and r.id.startswith("common_voice_de_") for r in rows), [r.speaker for r in rows]
    assert json.loads((out / "synth.json").read_text())["sentences"] == str(sentences.resolve())
