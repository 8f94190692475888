import hashlib

from whisper_sv.sources import CV_HEADER, iter_common_voice
from whisper_sv.synth import SynthConfig, plan_corpus, read_sentences, synthesize


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    # Eight clips: the fewest that give every split a clip (6 train, 1 dev, 1 test).
    a = synthesize(tmp_path / "a", SynthConfig(clips=8, seed=3), workers=2)
    b = synthesize(tmp_path / "b", SynthConfig(clips=8, seed=3), workers=1)
    c = synthesize(tmp_path / "c", SynthConfig(clips=8, seed=4), workers=1)
    assert _digest(a) == _digest(b)
    assert (a / "train.tsv").read_text() != (c / "train.tsv").read_text()


def test_common_voice_layout_and_real_header(sv_corpus):
    for split in ("train", "dev", "test", "validated"):
        header = (sv_corpus / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[0]
        assert header.split("\t") == CV_HEADER
    rows = list(iter_common_voice(sv_corpus, "validated"))
    assert len(rows) == 60
    assert all((sv_corpus / "clips" / r.id).is_file() and r.id.endswith(".mp3") for r in rows)


def test_splits_are_disjoint_by_sentence_even_with_repeats():
    jobs = plan_corpus(SynthConfig(clips=len(read_sentences()) + 500, seed=1))
    split_of = {}
    for job in jobs:
        assert split_of.setdefault(job.sentence, job.split) == job.split
    assert {j.split for j in jobs} == {"train", "dev", "test"}
    repeated = [j for j in jobs if j.index >= len(split_of)]
    assert len(repeated) == 500


def test_corpus_splits_disjoint_on_disk(sv_corpus):
    sentences = {s: {r.sentence for r in iter_common_voice(sv_corpus, s)} for s in ("train", "dev", "test")}
    assert sentences["train"] and sentences["dev"] and sentences["test"]
    assert not sentences["train"] & sentences["dev"]
    assert not sentences["train"] & sentences["test"]
    assert not sentences["dev"] & sentences["test"]


def test_rerun_skips_and_other_config_is_refused(sv_corpus):
    import pytest

    assert synthesize(sv_corpus, SynthConfig(clips=60, seed=7)) == sv_corpus
    with pytest.raises(ValueError, match="pick another --out"):
        synthesize(sv_corpus, SynthConfig(clips=61, seed=7))


def test_interrupted_run_is_finished(tmp_path):
    out = synthesize(tmp_path / "a", SynthConfig(clips=8, seed=5), workers=1)
    reference = _digest(out)
    (out / ".completed").unlink()
    (out / "train.tsv").unlink()
    next((out / "clips").iterdir()).unlink()
    synthesize(out, SynthConfig(clips=8, seed=5), workers=1)
    assert _digest(out) == reference
