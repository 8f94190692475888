"""Options made from config dataclasses: flags, help text from field metadata, environment variables."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from whisper_sv.common.errors import UserError
from whisper_sv.common.options import add_options, build, env_options, option, options_from, value_from_text


@dataclass(frozen=True)
class Example:
    name: str = option(help="what it is called")
    steps: int = option(10, "how many")  # a comment is for readers of the code, not --help
    rate: float | None = option(None, "Two lines of why, above the field.")
    verbose: bool = False
    tags: dict[str, float] = field(default_factory=dict)
    shape: list[int] = option(factory=lambda: [2, 3], help="a mutable default")


def parse(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_options(p, Example, aliases={"rate": "--old-rate"})
    return options_from(p.parse_args(argv), Example)


def test_help_comes_from_the_field_metadata_not_the_comments():
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_options(p, Example)
    help_text = " ".join(p.format_help().split())
    assert "what it is called (required)" in help_text and "how many (default: 10)" in help_text
    assert "a mutable default (default: [2, 3])" in help_text and "for readers" not in help_text
    assert Example(name="x").shape == [2, 3] and Example(name="x").shape is not Example(name="y").shape


def test_flags_read_values_by_the_field_type_and_leave_the_rest_unset():
    assert parse([]) == {}
    assert parse(["--name", "007", "--steps", "3"]) == {"name": "007", "steps": 3}  # a str stays a str
    assert parse(["--rate", "null"]) == {"rate": None}
    assert parse(["--name", '"cross_kv"']) == {"name": "cross_kv"}  # a JSON string, as a preset spells it
    assert parse(["--old-rate", "0.5"]) == {"rate": 0.5}
    assert parse(["--verbose"]) == {"verbose": True}
    assert parse(["--verbose", "false"]) == {"verbose": False}
    assert parse(["--verbose", "yes"]) == {"verbose": "yes"}  # not JSON's spelling: refused by the type check
    assert parse(["--tags", '{"a": 1}']) == {"tags": {"a": 1}}
    assert parse(["--steps", "abc"]) == {"steps": "abc"}  # left to the type check, which names the field


def test_the_preset_spelling_works_but_is_not_listed():
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_options(p, Example)
    assert options_from(p.parse_args(["--tags", "{}"]), Example) == {"tags": {}}
    help_text = p.format_help()
    assert "--rate" in help_text and "Two lines of why, above the field. (default: null)" in help_text
    assert "how many (default: 10)" in help_text and "(required)" in help_text


def test_build_refuses_unknown_keys_and_wrong_types_in_one_line():
    with pytest.raises(UserError, match=r"'stepz' \(did you mean 'steps'\?\)"):
        build(Example, {"name": "x", "stepz": 1})
    with pytest.raises(UserError, match="steps='abc': expected an integer"):
        build(Example, {"name": "x", "steps": "abc"})
    assert build(Example, {"name": "x", "steps": 2}) == Example(name="x", steps=2)


def test_environment_variables_by_field_name_or_alias():
    env = {"APP_STEPS": "4", "APP_NAME": "", "OLD_RATE": "1.5", "APP_VERBOSE": "1"}
    assert env_options(Example, "APP_", env, aliases={"rate": "OLD_RATE"}) == {"steps": 4, "rate": 1.5, "verbose": True}
    assert value_from_text("None", int | None) is None


def test_app_flags_and_space_variables_map_to_one_app_config(monkeypatch):
    from whisper_sv.cli import build_parser
    from whisper_sv.serving.app import AppConfig

    args = build_parser().parse_args(["app", "--min-window", "20", "--upload-ttl-s", "30", "--lm", "null"])
    assert build(AppConfig, options_from(args, AppConfig)) == AppConfig(min_window_s=20.0, upload_ttl_s=30.0, lm=None)
    env = {"WHISPER_SV_MIN_WINDOW": "25", "GRADIO_SERVER_PORT": "8000", "WHISPER_SV_MAX_SECONDS": "60"}
    aliases = {"host": "GRADIO_SERVER_NAME", "port": "GRADIO_SERVER_PORT", "min_window_s": "WHISPER_SV_MIN_WINDOW"}
    assert env_options(AppConfig, "WHISPER_SV_", env, aliases=aliases) == {"min_window_s": 25.0, "port": 8000, "max_seconds": 60.0}


def test_an_unknown_flag_names_the_closest_one(capsys):
    from whisper_sv.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--out", "x", "--clipz", "3"])
    assert exit_info.value.code == 2
    assert "unrecognized argument '--clipz' (did you mean --clips?)" in capsys.readouterr().err


def test_train_help_lists_every_key_with_its_default_and_flags_mix_with_training_keys():
    import dataclasses

    from whisper_sv.cli import build_parser
    from whisper_sv.training.config import TRAINING_DEFAULTS, TrainConfig

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    help_text = " ".join(train.format_help().split())
    for f in dataclasses.fields(TrainConfig):
        if f.name != "training":
            assert f"--{f.name.replace('_', '-')}" in help_text
    assert "freeze the encoder" not in help_text  # the field comment, not a paraphrase:
    assert "train the decoder only" in help_text and "(default: false)" in help_text
    assert all(f"{k}=" in help_text for k in TRAINING_DEFAULTS)
    args, extra = parser.parse_known_args(["train", "p.json", "--max_steps", "3", "--freeze-encoder", "-v", "--dropout", "0.1"])
    assert (args.config, args.freeze_encoder, args.dropout, args.verbose) == ("p.json", True, 0.1, True)
    assert extra == ["--max_steps", "3"]


def test_transcribe_reaches_every_decoding_option_including_the_temperature_fallback():
    from whisper_sv.cli import build_parser
    from whisper_sv.serving.inference import InferenceConfig

    args = build_parser().parse_args(["transcribe", "a.wav", "--temperatures", "[0, 0.4]", "--min-window", "20"])
    options = build(InferenceConfig, options_from(args, InferenceConfig))
    assert options == InferenceConfig(temperatures=(0.0, 0.4), min_window_s=20.0)
    with pytest.raises(ValueError, match="temperatures"):
        build(InferenceConfig, {"temperatures": [-1]})


def test_features_flags_are_the_feature_config_fields():
    from whisper_sv.cli import build_parser
    from whisper_sv.data.feature_config import FeatureConfig

    args = build_parser().parse_args(["features", "--source", "cv:x", "--split", "dev", "--out", "o",
                                      "--smoothing", '{"kind": "median", "ksize": 5}', "--shard-size", "3", "--n-mels", "null"])
    assert options_from(args, FeatureConfig, skip=("source", "split")) == {"smoothing": {"kind": "median", "ksize": 5}, "shard_size": 3, "n_mels": None}
    assert (args.source, args.split) == ("cv:x", "dev")  # where the clips come from: the run's, not the config's
