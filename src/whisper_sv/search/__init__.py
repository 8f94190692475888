"""The `whisper-sv search` stage: an Optuna study of training runs that survives crashes and spreads
over workers (`study`), its config (`config`) and its summary and plots (`report`).

May import: `common`, `audio`, `models`, `data`, `features`, `training`.
"""
