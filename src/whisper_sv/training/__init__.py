"""The `whisper-sv train` stage: the training config (`config`), the Trainer run (`train`), its batches
(`collator`), the encoder cache (`encoder_cache`), checkpoints and the run's report and model card
(`checkpoints`, `run_report`). Reads feature stores through `data`, never the feature pipeline.

May import: `common`, `audio`, `models`, `data`.
"""
