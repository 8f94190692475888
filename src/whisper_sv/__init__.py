"""whisper_sv: fine-tune OpenAI Whisper on Swedish without falling over.

One module per stage; see ../shared/DESIGN.md (copied in docs/) for the contracts between them.
"""

__version__ = "0.1.0"
