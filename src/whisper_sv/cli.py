"""``whisper-sv``: a thin shell over the library, one subcommand per stage.

Each stage module registers its own subcommand with ``add_cli(subparsers)`` beside the function it
wraps (openai/whisper keeps its CLI next to ``transcribe`` the same way); this file only collects
them.

A user error (`whisper_sv.common.errors`: a bad source, model path, value type or key) is one line on
stderr, ``whisper-sv CMD: error: ...``, and exit code 2, like argparse's own; ``-v/--verbose``
shows its traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys

from .common.errors import is_user_error, one_line

# (subcommand, module that registers it) in the order a user meets them.
STAGES = (
    ("synth", "whisper_sv.synth.corpus"),
    ("features", "whisper_sv.features.build"),
    ("train", "whisper_sv.training.train"),
    ("evaluate", "whisper_sv.evaluation.evaluate"),
    ("export", "whisper_sv.serving.export"),
    ("report-card", "whisper_sv.evaluation.report_card"),
    ("search", "whisper_sv.search.study"),
    ("transcribe", "whisper_sv.serving.inference"),
    ("app", "whisper_sv.serving.app"),
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage block is what ``--help`` is for) and no abbreviated
    flags: ``--freeze`` must not quietly mean ``--freeze-encoder`` when a preset key is meant."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="whisper-sv",
        description="Fine-tune OpenAI Whisper on Swedish without falling over.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages; show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in STAGES:
        importlib.import_module(module_name).add_cli(sub)
        # Also after the subcommand (`whisper-sv features ... -v`); SUPPRESS keeps the main flag's value.
        sub.choices[name].add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `train` and `search` also take any Seq2SeqTrainingArguments key (--max_steps 10): too many
    # to declare as flags, so they arrive as `extra` and the config names the closest key of a typo.
    if extra and not getattr(args, "takes_training_keys", False):
        command = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001 (argparse keeps it there)
        flags = [f for action in command._actions for f in action.option_strings if action.help != argparse.SUPPRESS]
        unknown = next((e for e in extra if e.startswith("-")), extra[0])
        close = difflib.get_close_matches(unknown.split("=")[0], flags, n=1)
        command.error(f"unrecognized argument {unknown!r}" + (f" (did you mean {close[0]}?)" if close else ""))
    args.extra_keys = extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except Exception as err:
        if args.verbose or not is_user_error(err):
            raise
        print(f"whisper-sv {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
