"""The synthetic corpus's speakers: espeak-ng's voices and MBROLA's, per language.

Each voice is one speaker with a readable id (``espeak-sv-m1``, ``mbrola-sw1``, ``espeak-en-m1``,
``mbrola-us1``): the id that ``synth --holdout-speakers`` takes and that evaluation reports WER
under. Its voice *family* is the id's prefix (``espeak``, ``mbrola``); a Common Voice
``client_id`` (a hex hash of a real speaker) falls in the family ``cv``.

A corpus has one language (``synth --language``, Swedish unless told). Its espeak family is
espeak-ng's voice for that language with 15 variants; its mbrola family is MBROLA's voices of that
language where whisper-sv knows them (Swedish: sw1, sw2; English: us1, us2, us3, en1). Any other
language espeak-ng speaks has the espeak family alone.

The corpus TSV's ``client_id`` is, as it always was, the sha256 of the voice's espeak-ng name:
a hash per speaker, like Common Voice's, and the same bytes for every existing seed.
`speaker_from_client_id` turns such a hash back into the readable id, so a corpus made before
speakers were named reports them too.

MBROLA's voices are diphones cut from recordings of real speakers, played by espeak-ng
(``espeak-ng -v mb-sw1``); Debian ships them in contrib/non-free (``mbrola``, ``mbrola-sw1``,
``mbrola-sw2``, ``mbrola-us1`` ...), Ubuntu in multiverse, and ``make setup`` installs them where it can.
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


# espeak-ng's variants that stay intelligible (whisper/croak do not), put after a language's voice
# ("sv", "sv+m1", ...). The order is the corpus's: a seed draws voices by position, so reordering
# would change every corpus.
ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt4")
# MBROLA's diphone databases per language (each a Debian package mbrola-NAME), in the corpus's
# order. Swedish (16 kHz): sw1 a male speaker, sw2 a female one. English (16 kHz): us1, us2, us3
# American, en1 British ("Roger", University of Edinburgh).
MBROLA_DATABASES: dict[str, tuple[str, ...]] = {"sv": ("sw1", "sw2"), "en": ("us1", "us2", "us3", "en1")}
LANGUAGE_NAMES = {"sv": "Swedish", "en": "English", "nb": "Norwegian Bokmål"}  # for messages; another language goes by its code
FAMILY_NAMES = ("espeak", "mbrola")  # every family, in the order a corpus records them


def language_name(language: str) -> str:
    """``"en"`` -> ``"English"``; a language without a name here -> its code."""
    return LANGUAGE_NAMES.get(language, language)


def espeak_voices(language: str) -> tuple[Voice, ...]:
    """espeak-ng's voice for `language` and its variants: ``espeak-en``, ``espeak-en-m1`` ..."""
    return tuple(_espeak(f"{language}+{v}" if v else language) for v in ESPEAK_VARIANTS)


def mbrola_voices(language: str) -> tuple[Voice, ...]:
    """MBROLA's voices of `language` that whisper-sv knows (none for most languages)."""
    return tuple(Voice(f"mbrola-{db}", "mbrola", f"mb-{db}") for db in MBROLA_DATABASES.get(language, ()))


@cache
def families(language: str = "sv") -> dict[str, tuple[Voice, ...]]:
    """``{family: its voices}`` for `language`: espeak always, mbrola where its voices are known."""
    mbrola = mbrola_voices(language)
    return {"espeak": espeak_voices(language), **({"mbrola": mbrola} if mbrola else {})}


ESPEAK_VOICES = espeak_voices("sv")
MBROLA_VOICES = mbrola_voices("sv")
FAMILIES: dict[str, tuple[Voice, ...]] = families("sv")  # Swedish, the default language
# Every speaker of the languages with a voice table (Swedish and English); ids are unique across them.
VOICES_BY_ID = {v.id: v for language in MBROLA_DATABASES for voices in families(language).values() for v in voices}
SPEAKER_OF_CLIENT_ID = {v.client_id: v.id for v in VOICES_BY_ID.values()}
CV_FAMILY = "cv"  # Common Voice's speakers: client_id is a hex hash of the contributor
_HEX_HASH = re.compile(r"[0-9a-f]{32,}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def install_mbrola(language: str = "sv") -> str:
    """How to get MBROLA's voices of `language`, for a message."""
    packages = " ".join(["mbrola", *(f"mbrola-{db}" for db in MBROLA_DATABASES.get(language, ()))])
    return ("run `make setup` (it enables Debian's contrib/non-free or Ubuntu's multiverse), or "
            f"`apt-get install {packages}` where those are enabled")


INSTALL_MBROLA = install_mbrola("sv")


AUTO = "auto"  # every family that renders here: espeak, and mbrola where MBROLA's voices of the language are installed


@cache
def espeak_languages() -> tuple[str, ...]:
    """The languages espeak-ng's own (not MBROLA) voices speak on this machine, from ``espeak-ng --voices``."""
    if shutil.which("espeak-ng") is None:
        return ()
    try:
        listed = subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True, check=True).stdout
    except (subprocess.CalledProcessError, OSError):
        return ()
    rows = [line.split() for line in listed.splitlines()[1:]]
    return tuple(sorted({r[1] for r in rows if len(r) >= 5 and not r[4].startswith("mb/")}))


def check_language(language: str) -> None:
    """Refuse, in one line, a language espeak-ng does not speak here (Swedish and English are always known)."""
    if language in MBROLA_DATABASES or language in espeak_languages():
        return
    why = "" if shutil.which("espeak-ng") else " (espeak-ng is not installed: `make setup`)"
    raise ValueError(f"language={language!r}: espeak-ng has no voice for it here{why}; `espeak-ng --voices` lists the languages it speaks")


@cache
def available_families(language: str = "sv") -> tuple[str, ...]:
    """What ``auto`` means on this machine for `language`; where it means espeak alone it says why, once, in one line."""
    if "mbrola" not in families(language):
        print(f"whisper-sv knows no MBROLA voices of {language_name(language)}, so the corpus uses espeak-ng's voices only")
        return ("espeak",)
    if missing_voices(("mbrola",), language):
        print(f"MBROLA's {language_name(language)} voices are not installed, so the corpus uses espeak-ng's voices only: "
              f"{install_mbrola(language)}")
        return ("espeak",)
    return tuple(families(language))


def parse_families(text: str, language: str = "sv") -> tuple[str, ...]:
    """``"mbrola, espeak"`` -> ``("espeak", "mbrola")``: known families, each once, in `FAMILY_NAMES`
    order; ``"auto"`` -> the families that render here for `language` (`available_families`)."""
    if text.strip() == AUTO:
        return available_families(language)
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = sorted(names - set(FAMILY_NAMES))
    if unknown or not names:
        raise ValueError(f"voices={text!r}: use voice families from {list(FAMILY_NAMES)}, comma-separated (e.g. espeak,mbrola)")
    if "mbrola" in names and "mbrola" not in families(language):
        raise ValueError(f"voices={text!r}: whisper-sv knows no MBROLA voices of {language_name(language)}; use --voices espeak")
    return tuple(f for f in FAMILY_NAMES if f in names)


def parse_speakers(text: str, language: str = "sv") -> tuple[str, ...]:
    """``"mbrola-sw2,espeak-sv-f1"`` -> the known speaker ids of `language`, sorted, each once."""
    ids = sorted({n.strip() for n in text.split(",") if n.strip()})
    known = [v.id for voices in families(language).values() for v in voices]
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ValueError(f"unknown speaker id(s) {unknown}: the speakers are {known}")
    return tuple(ids)


def speaker_from_client_id(client_id: str) -> str:
    """The readable speaker id of a synthetic corpus's ``client_id``; any other id unchanged.

    Swedish and English speakers are known without asking; a sha256 that is neither is looked up
    among the espeak voices of every language espeak-ng speaks here (Common Voice's own client ids
    are longer, so they never cost that look-up).
    """
    if client_id in SPEAKER_OF_CLIENT_ID:
        return SPEAKER_OF_CLIENT_ID[client_id]
    if _SHA256.fullmatch(client_id):
        return _espeak_speakers_here().get(client_id, client_id)
    return client_id


@cache
def _espeak_speakers_here() -> dict[str, str]:
    """``{client_id: speaker id}`` for the espeak voices of every language espeak-ng lists here."""
    return {v.client_id: v.id for language in espeak_languages() for v in espeak_voices(language)}


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


def missing_voices(names: tuple[str, ...], language: str = "sv") -> list[Voice]:
    """The voices of the families `names` of `language` that do not render on this machine (one word each is spoken)."""
    table = families(language)
    return [v for f in names for v in table.get(f, ()) if not renders(v)]
