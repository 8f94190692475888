"""Plumbing every stage shares: one-line user errors, atomic files and folder claims, locks,
dataclass options as CLI flags, the ranks of a multi-process job, WER and text normalisation.

May import: nothing else of whisper_sv.
"""
