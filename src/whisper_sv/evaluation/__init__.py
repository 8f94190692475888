"""How good a model is: WER on a split (`evaluate`) and the report card, base against tuned where
users decode (`report_card`: the app's backend, faster-whisper's defaults, the Transformers
pipeline; long-form, non-speech, another language, export parity).

May import: `common`, `audio`, `models`, `data`, `serving`.
"""
