"""The `whisper-sv features` stage: any source into a crash-safe, resumable feature store (`build`),
and the merge of stores written by several machines (`shard_merge`).

May import: `common`, `audio`, `models`, `data`.
"""
