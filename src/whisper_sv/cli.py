"""``whisper-sv``: a thin shell over the library, one subcommand per stage.

Each stage module registers its own subcommand with ``add_cli(subparsers)`` beside the function it
wraps (openai/whisper keeps its CLI next to ``transcribe`` the same way); this file only collects
them. Subcommands that are not built yet are listed with the issue that adds them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (subcommand, module that registers it) in the order a user meets them.
STAGES = (
    ("synth", "whisper_sv.synth"),
    ("features", "whisper_sv.features"),
    ("train", "whisper_sv.train"),
    ("evaluate", "whisper_sv.evaluate"),
    ("export", "whisper_sv.export"),
    ("search", "whisper_sv.search"),
    ("transcribe", "whisper_sv.transcribe"),
    ("app", "whisper_sv.app"),
)
# What each planned subcommand will do, and where its work is tracked, until its module exists.
PLANNED = {
    "features": ("audio -> exact Whisper log-mel feature store, resumable", "issue #3"),
    "train": ("fine-tune with Seq2SeqTrainer, resumable", "issue #4"),
    "evaluate": ("WER / orthographic WER / CER report of a model on a split", "issue #4"),
    "export": ("CTranslate2 export for faster-whisper", "issue #4"),
    "search": ("Optuna hyper-parameter search over train()", "a later issue (not filed yet)"),
    "app": ("Gradio app: transcribe and continue Swedish", "issue #5"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-sv",
        description="Fine-tune OpenAI Whisper on Swedish without falling over.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in STAGES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise  # a real missing dependency, not a stage still to be built
            what, where = PLANNED[name]
            stub = sub.add_parser(name, help=f"{what} [not built yet: {where}]")
            stub.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            stub.set_defaults(func=_not_built(name, where))
            continue
        module.add_cli(sub)
    return parser


def _not_built(name: str, where: str):
    def run(args: argparse.Namespace) -> int:
        print(f"whisper-sv {name} is not built yet; {where} adds it.", file=sys.stderr)
        return 2

    return run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
