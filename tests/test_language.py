"""The target language is configuration, Swedish the default: from synth through features, training,
the model card, evaluation, export and serving, a pipeline in another language (Norwegian Bokmål,
Whisper's <|no|>) decodes in that language without being told again."""

from __future__ import annotations

import json
import os

import pytest

from whisper_sv.common.errors import UserError
from whisper_sv.models.specs import DEFAULT_LANGUAGE, WHISPER_LANGUAGES, force_language, model_language, whisper_language

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_configured_codes_map_to_whisper_tokens():
    assert DEFAULT_LANGUAGE == "sv"
    assert [whisper_language(c) for c in ("sv", "nb", "NB", "<|en|>", "nn", "da")] == ["sv", "no", "no", "en", "nn", "da"]
    assert len(WHISPER_LANGUAGES) == 100 and len(set(WHISPER_LANGUAGES)) == 100


def test_a_language_whisper_does_not_know_is_one_line_naming_the_codes():
    with pytest.raises(UserError, match=r"language 'xx': not one of Whisper's languages; use its code, e\.g\. sv, nb"):
        whisper_language("xx")


def test_inference_options_refuse_an_unknown_language_before_any_model_loads():
    from whisper_sv.serving.inference import InferenceConfig

    assert InferenceConfig(language="nb").language == "nb"
    with pytest.raises(UserError, match="'swe'"):
        InferenceConfig(language="swe")


class _Gen:
    language = None


class _Model:
    def __init__(self):
        self.generation_config = _Gen()
        self.config = type("C", (), {"forced_decoder_ids": None})()


def test_a_model_keeps_the_language_it_was_fine_tuned_for_unless_told_otherwise():
    model = _Model()
    assert model_language(model) == "sv"  # a base model forces nothing: the default
    force_language(model, "nb")
    assert model.generation_config.language == "no" and model_language(model) == "no"
    force_language(model)  # reloaded without a language: keeps its own
    assert model_language(model) == "no"
    force_language(model, "sv")
    assert model_language(model) == "sv"


def test_labels_of_a_norwegian_store_start_with_whispers_norwegian_token():
    from whisper_sv.features.build import load_tokenizer

    tokenizer = load_tokenizer("packaged:whisper-base", "nb")
    ids = tokenizer("Hei på deg.").input_ids
    assert tokenizer.convert_ids_to_tokens(ids[:4]) == ["<|startoftranscript|>", "<|no|>", "<|transcribe|>", "<|notimestamps|>"]


@pytest.mark.slow
def test_a_norwegian_pipeline_from_synth_to_transcribe(tmp_path):
    """synth -> features -> tiny train -> evaluate -> export -> transcribe, all in Norwegian Bokmål."""
    from whisper_sv.data.feature_config import FeatureConfig
    from whisper_sv.evaluation.evaluate import evaluate
    from whisper_sv.features.build import build_features
    from whisper_sv.serving.export import export_ct2
    from whisper_sv.serving.inference import FasterWhisperBackend, TransformersBackend
    from whisper_sv.synth.corpus import SynthConfig, read_sentences, sentences_file, synthesize
    from whisper_sv.training.config import load_config
    from whisper_sv.training.train import train

    corpus = synthesize(tmp_path / "nb-synth", SynthConfig(language="nb", clips=40, voices="espeak"), workers=2)
    record = json.loads((corpus / "synth.json").read_text())
    assert (record["language"], record["sentences"]) == ("nb", "data/nb_sentences.txt")
    assert "\tnb-NO" in (corpus / "train.tsv").read_text(encoding="utf-8")  # Common Voice's locale of Bokmål
    nb_sentences = set(read_sentences(sentences_file("data/nb_sentences.txt")))

    stores = tmp_path / "features"
    for split in ("train", "dev", "test"):
        build_features(f"cv:{corpus}", split, stores / split, FeatureConfig(language="nb", shard_size=16), workers=1, progress=False)
    cfg = load_config("tiny", {"train_data": str(stores / "train"), "eval_data": str(stores / "dev"),
                               "output_dir": str(tmp_path / "run"), "max_steps": 2, "eval_steps": 2, "save_steps": 2})
    final = train(cfg)["final"]

    generation = json.loads((final / "generation_config.json").read_text())
    assert generation["language"] == "no"  # what every later decode forces without being told
    card = (final / "README.md").read_text(encoding="utf-8")
    assert "language: nb" in card and "fine-tuned on Norwegian Bokmål" in card and 'language="no"' in card

    report = evaluate(str(final), str(stores / "test"), out=tmp_path / "eval.json", max_samples=4)
    assert report["n"] == 4
    rows = (tmp_path / "eval.csv").read_text(encoding="utf-8")
    assert any(sentence in rows for sentence in nb_sentences)

    ct2 = export_ct2(str(final), tmp_path / "ct2")
    assert json.loads((ct2 / "whisper_sv_export.json").read_text())["language"] == "no"
    clip = next((corpus / "clips").iterdir())
    from whisper_sv.audio.io import load_audio

    audio = load_audio(clip)
    served = FasterWhisperBackend(ct2, label="nb-tiny")
    assert served.language == "no" and served.tokenizer.language_code == "no"
    assert isinstance(served.transcribe(audio), str)
    assert model_language(TransformersBackend(str(final)).model) == "no"
    assert FasterWhisperBackend(ct2, label="nb-tiny", language="sv").language == "sv"  # told otherwise, it obeys
