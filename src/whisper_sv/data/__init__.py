"""What the stages hand each other: corpora (`sources`: Common Voice folders, Hub datasets,
synthetic corpora; `voices`: the synthetic speakers and their families) and feature stores (their
config, Parquet row format and reader: `feature_config`, `shard_format`, `feature_store`; the rows
the training recipe adds: `recipe`).

May import: `common`, `audio`, `models`.
"""
