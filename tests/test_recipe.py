"""The training recipe's rows in a feature store: stitched clips with timestamp tokens at the frames
where their sentences are, non-speech clips with the no-speech target, and replayed English clips in
the share the config asks for; the collator's two targets for a non-speech row."""

from __future__ import annotations

import json

import numpy as np
import pytest

from whisper_sv.data.feature_config import FeatureConfig
from whisper_sv.data.feature_store import FeatureStore
from whisper_sv.data.recipe import Recipe, nospeech_token_id
from whisper_sv.features.build import build_features, load_tokenizer
from whisper_sv.synth.corpus import SynthConfig, synthesize
from whisper_sv.training.collator import SpeechCollator

SHARD = 16  # the session corpus's 48 training clips: 3 shards
RECIPE = {"stitched_share": 0.5, "timestamp_share": 0.5, "nonspeech_share": 0.25, "replay_share": 0.25, "seed": 3}


@pytest.fixture(scope="module")
def en_corpus(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("en-synth"), SynthConfig(language="en", clips=30, seed=2, voices="espeak", realism=False), workers=2)


@pytest.fixture(scope="module")
def recipe_store(sv_corpus, en_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe") / "train"
    config = FeatureConfig(shard_size=SHARD, recipe={**RECIPE, "replay_source": f"cv:{en_corpus}"})
    build_features(f"cv:{sv_corpus}", "train", out, config, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("packaged:whisper-base")


def _rows(store, prefix):
    return [r for r in FeatureStore(store).rows() if r.clip_id.startswith(prefix)]


def _collatable(row) -> dict:
    """A store row as the trainer's dataset hands it to the collator."""
    return {"labels": row.labels, "n_frames": row.n_frames, "pad_value": row.pad_value, "input_features": row.input_features}


def test_the_store_holds_each_ingredient_in_its_share(recipe_store):
    rows = list(FeatureStore(recipe_store).rows())
    plain = [r for r in rows if r.clip_id.startswith("common_voice_")]
    assert len(plain) == 48
    per_shard = [16, 16, 16]
    assert len(_rows(recipe_store, "stitched-")) == sum(round(0.5 * n) for n in per_shard)
    assert len(_rows(recipe_store, "nonspeech-")) == sum(round(0.25 * n) for n in per_shard)
    assert len(_rows(recipe_store, "replay:")) == sum(round(0.25 * n) for n in per_shard)
    saved = json.loads((recipe_store / "feature_config.json").read_text())
    assert saved["recipe"]["stitched_share"] == 0.5


def test_a_store_without_the_recipe_keeps_its_old_config(sv_stores):
    assert "recipe" not in json.loads((sv_stores["train"] / "feature_config.json").read_text())


def test_stitched_clips_carry_timestamp_tokens_at_the_frames_of_their_sentences(recipe_store, tokenizer):
    begin = tokenizer.convert_tokens_to_ids("<|0.00|>")
    stamped = _rows(recipe_store, "stitched-")
    with_ts = [r for r in stamped if r.clip_id.endswith("-ts")]
    assert with_ts and len(with_ts) < len(stamped)  # timestamp_share 0.5: some of each
    for row in with_ts:
        labels = list(row.labels)
        assert labels[:3] == tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|sv|>", "<|transcribe|>"])
        assert tokenizer.convert_tokens_to_ids("<|notimestamps|>") not in labels
        times = [(t - begin) * 0.02 for t in labels if t >= begin]
        assert len(times) % 2 == 0 and len(times) >= 4 and times == sorted(times)
        assert times[-1] <= row.duration + 1e-6 <= 30
        # Every segment's frames hold speech, every pause between two segments only the floor.
        energy = row.input_features.astype(np.float32).mean(axis=0)
        spans = [(round(times[i] * 100), round(times[i + 1] * 100)) for i in range(0, len(times), 2)]
        for (s, e), (next_s, _) in zip(spans, spans[1:]):
            speech, pause = energy[s:e].mean(), energy[e + 5 : next_s - 5].mean()
            assert speech > pause + 0.15, (row.clip_id, s, e, next_s)
        # The text between the stamps is the sentences, in order.
        text = tokenizer.decode([t for t in labels if t < begin], skip_special_tokens=True)
        assert " ".join(text.split()) == " ".join(row.sentence.split())


def test_stitched_clips_without_timestamps_have_the_joined_text(recipe_store, tokenizer):
    plain = [r for r in _rows(recipe_store, "stitched-") if not r.clip_id.endswith("-ts")]
    for row in plain:
        assert list(row.labels[:4]) == tokenizer.convert_tokens_to_ids(
            ["<|startoftranscript|>", "<|sv|>", "<|transcribe|>", "<|notimestamps|>"])
        assert list(row.labels) == tokenizer(row.sentence).input_ids  # what the tokenizer gives the joined text


def test_a_non_speech_row_trains_the_no_speech_token_and_an_empty_transcript(recipe_store, tokenizer):
    ids = tokenizer.convert_tokens_to_ids
    nospeech = nospeech_token_id(tokenizer)
    assert nospeech == ids("<|nocaptions|>")  # base's vocabulary: <|nospeech|> is not in it
    rows = _rows(recipe_store, "nonspeech-")
    assert rows
    for row in rows:
        assert row.sentence == "" and list(row.labels) == [ids("<|startoftranscript|>"), nospeech, ids("<|sv|>"),
                                                          ids("<|transcribe|>"), ids("<|notimestamps|>"), ids("<|endoftext|>")]
    speech = _rows(recipe_store, "common_voice_")[0]
    collate = SpeechCollator(ids("<|startoftranscript|>"), nospeech_token_id=nospeech, pad_token_id=ids("<|endoftext|>"))
    batch = collate([_collatable(speech), _collatable(rows[0])])
    labels, decoder = batch["labels"][1].tolist(), batch["decoder_input_ids"][1].tolist()
    assert labels[:4] == [nospeech, ids("<|transcribe|>"), ids("<|notimestamps|>"), ids("<|endoftext|>")]
    assert decoder[:4] == ids(["<|startoftranscript|>", "<|sv|>", "<|transcribe|>", "<|notimestamps|>"])
    # The speech row's decoder input is its labels shifted right, as the model would make it.
    n = len(speech.labels) - 1
    assert batch["decoder_input_ids"][0, 1:n].tolist() == batch["labels"][0, : n - 1].tolist()
    # Without a non-speech row the batch is what it always was: labels alone.
    assert "decoder_input_ids" not in collate([_collatable(speech)])


def test_replayed_clips_carry_their_own_language(recipe_store, tokenizer, en_corpus):
    rows = _rows(recipe_store, "replay:")
    header, *lines = (en_corpus / "train.tsv").read_text(encoding="utf-8").splitlines()
    column = header.split("\t").index("sentence")
    english = {line.split("\t")[column] for line in lines}
    for row in rows:
        assert row.labels[1] == tokenizer.convert_tokens_to_ids("<|en|>")
        assert row.sentence in english


def test_the_recipe_rows_are_the_same_on_a_second_run(recipe_store, sv_corpus, en_corpus, tmp_path):
    config = FeatureConfig(shard_size=SHARD, recipe={**RECIPE, "replay_source": f"cv:{en_corpus}"})
    build_features(f"cv:{sv_corpus}", "train", tmp_path / "again", config, workers=2, progress=False)
    first = [json.loads(line)["sha256"] for line in (recipe_store / "manifest.jsonl").read_text().splitlines()]
    second = [json.loads(line)["sha256"] for line in (tmp_path / "again" / "manifest.jsonl").read_text().splitlines()]
    assert first == second


@pytest.fixture(scope="module")
def prompted_store(sv_corpus, en_corpus, tmp_path_factory):
    """The recipe store's config with every stitched clip prompted."""
    out = tmp_path_factory.mktemp("prompted") / "train"
    config = FeatureConfig(shard_size=SHARD, recipe={**RECIPE, "replay_source": f"cv:{en_corpus}", "prompt_share": 1.0})
    build_features(f"cv:{sv_corpus}", "train", out, config, workers=1, progress=False)
    return out


def test_prompted_clips_start_with_earlier_text_and_are_the_unprompted_clips_after_it(recipe_store, prompted_store, tokenizer):
    ids = tokenizer.convert_tokens_to_ids
    prev, sot, begin = ids("<|startofprev|>"), ids("<|startoftranscript|>"), ids("<|0.00|>")
    plain = {r.clip_id: r for r in _rows(recipe_store, "stitched-")}
    prompted = _rows(prompted_store, "stitched-")
    assert len(prompted) == len(plain) and all("-p" in r.clip_id for r in prompted)
    sentences = {r.sentence.strip() for r in _rows(recipe_store, "common_voice_")}
    for row in prompted:
        unprompted = plain[row.clip_id.replace("-p", "")]
        labels = list(row.labels)
        at = labels.index(sot)
        assert labels[0] == prev and 2 <= at <= 1 + 160
        # After the prompt: the row the store without prompts holds, with the same audio.
        assert labels[at:] == list(unprompted.labels)
        assert np.array_equal(row.input_features, unprompted.input_features)
        # The prompt is the latest tokens of other clips' sentences: it ends with a whole sentence
        # of the shard that is not in this row. With timestamps when the row has them: a start and
        # an end around each sentence, rising within a window.
        prompt = labels[1:at]
        text = tokenizer.decode([t for t in prompt if t < begin], skip_special_tokens=True).strip()
        last = [s for s in sentences if text.endswith(s)]
        assert last and not any(s in row.sentence for s in last), (text, row.sentence)
        stamps = [(t - begin) * 0.02 for t in prompt if t >= begin]
        assert bool(stamps) == row.clip_id.endswith("-ts")
        if stamps:
            assert prompt[-1] >= begin and all(0 <= t <= 30 for t in stamps)
            pairs = list(zip(stamps[-2::-2], stamps[::-2]))  # (start, end) of each sentence, newest first
            assert all(start < end for start, end in pairs)
    # Prompts of every length up to the cap: not one fixed size the model could learn.
    assert len({list(r.labels).index(sot) for r in prompted}) > 3


def test_a_store_without_prompts_keeps_its_config_and_bytes(recipe_store, sv_corpus, en_corpus, tmp_path):
    saved = json.loads((recipe_store / "feature_config.json").read_text())
    assert "prompt_share" not in saved["recipe"] and "prompt_max_tokens" not in saved["recipe"]
    config = FeatureConfig(shard_size=SHARD, recipe={**RECIPE, "replay_source": f"cv:{en_corpus}", "prompt_share": 0.0})
    build_features(f"cv:{sv_corpus}", "train", tmp_path / "zero", config, workers=1, progress=False)
    assert (tmp_path / "zero" / "manifest.jsonl").read_text() == (recipe_store / "manifest.jsonl").read_text()


def test_a_prompted_row_is_read_not_written(prompted_store, tokenizer):
    """The collator's decoder inputs for a prompted row are the prompt, sot, language, task and text;
    its targets start after sot (-100 over the prompt), beside a plain and a non-speech row; a tiny
    Whisper gets a finite loss from the batch."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    sot, eot = ids("<|startoftranscript|>"), ids("<|endoftext|>")
    row = _rows(prompted_store, "stitched-")[0]
    speech, silent = _rows(prompted_store, "common_voice_")[0], _rows(prompted_store, "nonspeech-")[0]
    collate = SpeechCollator(sot, nospeech_token_id=nospeech_token_id(tokenizer), prev_token_id=ids("<|startofprev|>"),
                             pad_token_id=eot)
    batch = collate([_collatable(speech), _collatable(row), _collatable(silent)])
    labels, decoder = batch["labels"].tolist(), batch["decoder_input_ids"].tolist()
    stored = list(row.labels)
    at = stored.index(sot)
    assert decoder[1][: len(stored) - 1] == stored[:-1]
    assert labels[1][:at] == [-100] * at and labels[1][at : len(stored) - 1] == stored[at + 1 :]
    assert labels[1][at] == ids("<|sv|>")  # the first target: the language, read after the prompt
    # The plain row is shifted as the model would shift it; the non-speech row keeps its two targets.
    n = len(speech.labels)
    assert decoder[0][:n - 1] == list(speech.labels[:-1]) and labels[0][: n - 1] == list(speech.labels[1:])
    assert labels[2][:4] == [nospeech_token_id(tokenizer), ids("<|transcribe|>"), ids("<|notimestamps|>"), eot]
    assert batch["labels"].shape == batch["decoder_input_ids"].shape and batch["labels"].shape[1] % 32 == 0
    tiny = WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80, max_target_positions=448))
    with torch.no_grad():
        loss = tiny(input_features=batch["input_features"], decoder_input_ids=batch["decoder_input_ids"], labels=batch["labels"]).loss
    assert torch.isfinite(loss)


@pytest.mark.parametrize("bad, words", [
    ({"stiched_share": 0.3}, "did you mean 'stitched_share'"),
    ({"timestamp_share": 2}, "timestamp_share"),
    ({"replay_share": 0.1}, "needs replay_source"),
    ({"stitch_max_s": 40}, "stitch_max_s"),
    ({"prompt_share": 0.5}, "set stitched_share too"),
    ({"stitched_share": 0.3, "prompt_share": 1.5}, "prompt_share"),
    ({"stitched_share": 0.3, "prompt_share": 0.5, "prompt_max_tokens": 300}, "prompt_max_tokens"),
])
def test_a_bad_recipe_is_refused_in_one_line(bad, words):
    with pytest.raises(Exception, match=words):
        Recipe.parse(bad)
