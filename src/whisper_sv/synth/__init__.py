"""The `whisper-sv synth` stage: a synthetic corpus in Common Voice's layout from CC0 sentences,
espeak-ng's and MBROLA's voices and acoustic realism.

May import: `common`, `audio`, `data`.
"""
