"""whisper_sv: fine-tune OpenAI Whisper on Swedish without falling over.

One module per stage, each with one library function and one CLI subcommand; the README says
what each stage takes and makes, and each module's docstring the contract it keeps.
"""

__version__ = "0.1.0"
