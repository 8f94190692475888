"""The `whisper-sv train` stage: the training config (`config`), the run (`train`), its batches
(`collator`) and Trainer (`trainer`), the encoder cache (`encoder_cache`), checkpoints and the
run's report and model card (`checkpoints`, `run_report`). Reads feature stores through `data`,
never the feature pipeline.

May import: `common`, `audio`, `models`, `data`.
"""
