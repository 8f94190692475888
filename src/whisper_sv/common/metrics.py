"""WER measured the same way everywhere, in any language: normalised (diacritics kept), orthographic, and CER.

Whisper's `BasicTextNormalizer` by default strips diacritics, which merges Swedish words that differ
only in å/ä/ö ("får" and "far", "här" and "har"), and Norwegian ones in æ/ø/å. Those are letters,
not accents, so the normalised WER here keeps them: lower case, punctuation and symbols removed, whitespace collapsed.
Per-utterance edit counts (`utterance_counts`) add up to the WER and CER of any group of
utterances (`grouped_scores`): evaluation's figures per speaker and per voice family.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence


@lru_cache(maxsize=1)
def _normalizer():
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer(remove_diacritics=False)


def normalize_text(text: str) -> str:
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
    norm = [(normalize_text(r), normalize_text(h)) for r, h in zip(references, hypotheses)]
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
    """Per utterance ``(word errors, reference words)`` after `normalize_text` (`utterance_counts`).

    Summed over utterances with words, errors / words is `wer_report`'s normalised WER; the pairs
    let two systems be compared on the same clips (paired bootstrap, Wilcoxon).
    """
    return [(c["word_errors"], c["words"]) for c in utterance_counts(references, hypotheses)]


def utterance_counts(references: Sequence[str], hypotheses: Sequence[str]) -> list[dict[str, int]]:
    """Per utterance, after `normalize_text`: ``word_errors``, ``words``, ``char_errors``, ``chars``.

    Edits are substitutions + deletions + insertions, counted as `wer_report` counts them (an
    empty reference counts nothing), so summed over any set of utterances they give that set's
    WER and CER, and summed over all, the corpus's.
    """
    import jiwer

    out = []
    for ref, hyp in zip(references, hypotheses, strict=True):
        ref, hyp = normalize_text(ref), normalize_text(hyp)
        if not ref:
            out.append({"word_errors": 0, "words": 0, "char_errors": 0, "chars": 0})
            continue
        w, c = jiwer.process_words(ref, hyp), jiwer.process_characters(ref, hyp)
        out.append({
            "word_errors": w.substitutions + w.deletions + w.insertions,
            "words": w.hits + w.substitutions + w.deletions,
            "char_errors": c.substitutions + c.deletions + c.insertions,
            "chars": c.hits + c.substitutions + c.deletions,
        })
    return out


def grouped_scores(counts: Sequence[dict[str, int]], groups: Sequence[str]) -> dict[str, dict[str, float | int | None]]:
    """``{group: {"wer", "cer", "n", "word_errors", "words", "char_errors", "chars"}}`` from
    `utterance_counts` and each utterance's group (a speaker, a voice family), groups sorted.

    The counts of the groups add up to the corpus's; ``n`` counts the utterances scored (a
    non-empty reference), and a group with none has ``wer`` and ``cer`` None.
    """
    sums: dict[str, dict[str, int]] = {}
    for count, group in zip(counts, groups, strict=True):
        total = sums.setdefault(group, {"n": 0, "word_errors": 0, "words": 0, "char_errors": 0, "chars": 0})
        total["n"] += count["words"] > 0
        for key, value in count.items():
            total[key] += value
    return {
        group: {
            "wer": s["word_errors"] / s["words"] if s["words"] else None,
            "cer": s["char_errors"] / s["chars"] if s["chars"] else None,
            **s,
        }
        for group, s in sorted(sums.items())
    }
