"""The synthetic corpus's speakers: espeak-ng's Swedish voices and MBROLA's (issue #11).

Each voice is one speaker with a readable id (``espeak-sv-m1``, ``mbrola-sw1``): the id that
``synth --holdout-speakers`` takes and that evaluation reports WER under. Its voice *family* is
the id's prefix (``espeak``, ``mbrola``); a Common Voice ``client_id`` (a hex hash of a real
speaker) falls in the family ``cv``.

The corpus TSV's ``client_id`` is, as it always was, the sha256 of the voice's espeak-ng name:
a hash per speaker, like Common Voice's, and the same bytes for every existing seed.
`speaker_from_client_id` turns such a hash back into the readable id, so a corpus made before
speakers were named reports them too.

MBROLA's voices are diphones cut from recordings of real speakers at Lund University, played by
espeak-ng (``espeak-ng -v mb-sw1``); Debian ships them in contrib/non-free (``mbrola``,
``mbrola-sw1``, ``mbrola-sw2``), Ubuntu in multiverse, and ``make setup`` installs them where it can.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache

import numpy as np
import soundfile as sf


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: `id` names it, `espeak_name` is what ``espeak-ng -v`` is given."""

    id: str  # espeak-sv-m1, mbrola-sw2: family, then the voice
    family: str  # espeak or mbrola
    espeak_name: str  # sv+m1, mb-sw2

    @property
    def client_id(self) -> str:
        """The corpus TSV's ``client_id``: sha256 of the espeak-ng name, as synth has always written it."""
        return hashlib.sha256(self.espeak_name.encode()).hexdigest()


def _espeak(name: str) -> Voice:
    return Voice("espeak-" + name.replace("+", "-"), "espeak", name)


# espeak-ng's Swedish voice with variants that stay intelligible (whisper/croak do not). The order
# is the corpus's: a seed draws voices by position, so reordering would change every corpus.
ESPEAK_VOICES = tuple(_espeak(n) for n in (
    "sv", "sv+m1", "sv+m2", "sv+m3", "sv+m4", "sv+m5", "sv+m6", "sv+m7",
    "sv+f1", "sv+f2", "sv+f3", "sv+f4", "sv+f5", "sv+klatt", "sv+klatt2", "sv+klatt4",
))
# MBROLA's Swedish diphone voices (16 kHz): sw1 a male speaker, sw2 a female one.
MBROLA_VOICES = (Voice("mbrola-sw1", "mbrola", "mb-sw1"), Voice("mbrola-sw2", "mbrola", "mb-sw2"))
FAMILIES: dict[str, tuple[Voice, ...]] = {"espeak": ESPEAK_VOICES, "mbrola": MBROLA_VOICES}
VOICES_BY_ID = {v.id: v for family in FAMILIES.values() for v in family}
SPEAKER_OF_CLIENT_ID = {v.client_id: v.id for v in VOICES_BY_ID.values()}
CV_FAMILY = "cv"  # Common Voice's speakers: client_id is a hex hash of the contributor
_HEX_HASH = re.compile(r"[0-9a-f]{32,}")
INSTALL_MBROLA = (
    "run `make setup` (it enables Debian's contrib/non-free or Ubuntu's multiverse), or "
    "`apt-get install mbrola mbrola-sw1 mbrola-sw2` where those are enabled"
)


AUTO = "auto"  # every family that renders here: espeak, and mbrola where MBROLA's Swedish voices are installed


@cache
def available_families() -> tuple[str, ...]:
    """What ``auto`` means on this machine; where MBROLA is missing it says so, once, in one line."""
    if missing_voices(("mbrola",)):
        print(f"MBROLA's Swedish voices are not installed, so the corpus uses espeak-ng's voices only: {INSTALL_MBROLA}")
        return ("espeak",)
    return tuple(FAMILIES)


def parse_families(text: str) -> tuple[str, ...]:
    """``"mbrola, espeak"`` -> ``("espeak", "mbrola")``: known families, each once, in `FAMILIES`
    order; ``"auto"`` -> the families that render here (`available_families`)."""
    if text.strip() == AUTO:
        return available_families()
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = sorted(names - set(FAMILIES))
    if unknown or not names:
        raise ValueError(f"voices={text!r}: use voice families from {list(FAMILIES)}, comma-separated (e.g. espeak,mbrola)")
    return tuple(f for f in FAMILIES if f in names)


def parse_speakers(text: str) -> tuple[str, ...]:
    """``"mbrola-sw2,espeak-sv-f1"`` -> the known speaker ids, sorted, each once."""
    ids = sorted({n.strip() for n in text.split(",") if n.strip()})
    unknown = [i for i in ids if i not in VOICES_BY_ID]
    if unknown:
        raise ValueError(f"unknown speaker id(s) {unknown}: the speakers are {list(VOICES_BY_ID)}")
    return tuple(ids)


def speaker_from_client_id(client_id: str) -> str:
    """The readable speaker id of a synthetic corpus's ``client_id``; any other id unchanged."""
    return SPEAKER_OF_CLIENT_ID.get(client_id, client_id)


def voice_family(speaker: str) -> str:
    """``espeak-sv-m1`` -> ``espeak``; a Common Voice hash -> ``cv``; ``""`` (unknown) -> ``""``.

    Any other id's family is its prefix up to the first dash (the whole id when it has none).
    """
    if not speaker:
        return ""
    if _HEX_HASH.fullmatch(speaker):
        return CV_FAMILY
    return speaker.split("-", 1)[0]


def speak(voice: Voice, text: str, rate: int, pitch: int) -> tuple[np.ndarray, int]:
    """``espeak-ng -v NAME -s RATE -p PITCH``: float32 mono samples (n,) and their sample rate.

    espeak-ng's own voices come at 22.05 kHz, MBROLA's at 16 kHz. `rate` is words per minute,
    `pitch` espeak's 0-99 scale; both apply to MBROLA voices too.
    """
    proc = subprocess.run(
        ["espeak-ng", "-v", voice.espeak_name, "-s", str(rate), "-p", str(pitch), "--stdout", text],
        capture_output=True,
        check=True,
    )
    audio, sample_rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    return audio, sample_rate


@cache
def renders(voice: Voice) -> bool:
    """Whether `voice` speaks here: espeak-ng is installed and says a word in it, with some sound."""
    if shutil.which("espeak-ng") is None:
        return False
    try:
        audio, _ = speak(voice, "hej", 175, 50)
    except (subprocess.CalledProcessError, RuntimeError, OSError):  # no such voice, or no MBROLA database
        return False
    return audio.size > 0 and float(np.abs(audio).max()) > 0


def missing_voices(families: tuple[str, ...]) -> list[Voice]:
    """The voices of `families` that do not render on this machine (one word each is spoken)."""
    return [v for f in families for v in FAMILIES[f] if not renders(v)]
