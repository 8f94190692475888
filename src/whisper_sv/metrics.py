"""WER measured the same way everywhere: normalised (keeping å, ä, ö), orthographic, and CER.

Whisper's `BasicTextNormalizer` by default strips diacritics, which merges Swedish words that differ
only in å/ä/ö ("får" and "far", "här" and "har"). Those are letters in Swedish, not accents, so the
normalised WER here keeps them: lower case, punctuation and symbols removed, whitespace collapsed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence


@lru_cache(maxsize=1)
def _normalizer():
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer(remove_diacritics=False)


def normalize_sv(text: str) -> str:
    """Whisper's basic normaliser with diacritics kept: ``"Får jag, sa hon?" -> "får jag sa hon"``."""
    return " ".join(_normalizer()(text).split())


def wer_report(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float | int]:
    """``{"wer", "wer_ortho", "cer", "n"}`` over a corpus (fractions, not percent).

    Pairs whose reference is empty after normalisation are left out of the normalised WER and CER
    (a WER against nothing is undefined), as Whisper's own evaluation does; ``n`` counts the pairs
    scored.
    """
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no utterances to score")
    ortho = [(r.strip(), h.strip()) for r, h in zip(references, hypotheses) if r.strip()]
    norm = [(normalize_sv(r), normalize_sv(h)) for r, h in zip(references, hypotheses)]
    norm = [(r, h) for r, h in norm if r]
    if not norm:
        raise ValueError("every reference is empty after normalisation; nothing to score")
    return {
        "wer": jiwer.wer([r for r, _ in norm], [h for _, h in norm]),
        "wer_ortho": jiwer.wer([r for r, _ in ortho], [h for _, h in ortho]),
        "cer": jiwer.cer([r for r, _ in norm], [h for _, h in norm]),
        "n": len(norm),
    }


def utterance_errors(references: Sequence[str], hypotheses: Sequence[str]) -> list[tuple[int, int]]:
    """Per utterance ``(word errors, reference words)`` after `normalize_sv`.

    Summed over utterances with words, errors / words is `wer_report`'s normalised WER; the pairs
    let two systems be compared on the same clips (paired bootstrap, Wilcoxon).
    """
    import jiwer

    out = []
    for ref, hyp in zip(references, hypotheses, strict=True):
        ref, hyp = normalize_sv(ref), normalize_sv(hyp)
        if not ref:
            out.append((0, 0))
            continue
        m = jiwer.process_words(ref, hyp)
        out.append((m.substitutions + m.deletions + m.insertions, len(ref.split())))
    return out
