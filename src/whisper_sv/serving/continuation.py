"""Let a Swedish causal language model continue a transcript.

Any Hugging Face causal LM works, by Hub id or local folder (``AutoModelForCausalLM`` +
``AutoTokenizer``); a small open Swedish one is ``AI-Sweden-Models/gpt-sw3-126m``. The model is
loaded lazily on the first request, and a model that is missing or cannot be loaded offline turns
into a plain message on the page instead of an error, so the app still transcribes.

Every request has a bounded cost: text over `MAX_TEXT_CHARS` is refused before it is
tokenised, only its last `MAX_PROMPT_CHARS` characters are tokenised, and the new tokens are
clamped to half the model's context, so no setting the API accepts can index past it.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

SUGGESTED_LM = "AI-Sweden-Models/gpt-sw3-126m"
NO_LM = (
    "No language model configured: start the app with --lm MODEL (a Hub id such as "
    f"{SUGGESTED_LM} or a local folder) to continue transcripts."
)
NOTHING_TO_CONTINUE = "Nothing to continue: transcribe some Swedish speech (or type text) first."
NO_WORDS = "The language model wrote no words here: raise the length or the temperature."
MAX_NEW_TOKENS = 200  # the slider's top: bounds the work one request can ask for
MAX_PROMPT_TOKENS = 512  # longer transcripts keep their end, which is what gets continued
# Refused above this before any tokenising: 600 s of speech (the app's cap) is ~10,000 characters.
MAX_TEXT_CHARS = 20_000
# Only the end is tokenised: no BPE token is 16 characters on average, so this always holds
# MAX_PROMPT_TOKENS tokens of real text, and tokenising costs the same for any text length.
MAX_PROMPT_CHARS = 16 * MAX_PROMPT_TOKENS
# Sampling below this temperature divides the logits into inf and NaN; 0 is greedy.
MIN_TEMPERATURE = 0.05


def check_text(text: str) -> None:
    """Raise ValueError, saying what to do, when `text` is too long to continue."""
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"The text is {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}: "
                         "shorten it (only its end is continued).")


@dataclass(frozen=True)
class ContinuationConfig:
    """The knobs on the page: how much to write and how adventurously."""

    max_new_tokens: int = 40
    temperature: float = 0.8  # 0 = greedy
    top_p: float = 0.95

    def __post_init__(self):
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"length {self.max_new_tokens}: choose 1 to {MAX_NEW_TOKENS} tokens")
        if not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature <= 2):  # NaN fails too
            raise ValueError(f"temperature {self.temperature:g}: choose 0 (greedy) or {MIN_TEMPERATURE:g} to 2")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p {self.top_p:g}: choose a value above 0, at most 1")


class Continuer:
    """A causal LM loaded on first use; `continue_text` never raises for a missing model."""

    def __init__(self, lm_spec: str | None, device: str = "cpu"):
        self.lm_spec, self.device = lm_spec or None, device
        self._model = self._tokenizer = None
        self._error: str | None = None if self.lm_spec else NO_LM
        self._lock = threading.Lock()

    @property
    def status(self) -> str:
        """One line for the page: which model continues, or why none does."""
        if self._error:
            return self._error
        state = "loaded" if self._model is not None else "loads on first use"
        return f"Continuation model: {self.lm_spec} ({state})"

    def load(self) -> bool:
        """Load the model now; False (and `status` says why) when it cannot be loaded."""
        with self._lock:
            return self._load_locked()

    def _load_locked(self) -> bool:
        if self._model is not None:
            return True
        if self._error:
            return False
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.lm_spec)
            self._model = AutoModelForCausalLM.from_pretrained(self.lm_spec).to(self.device).eval()
        except Exception as err:  # offline without a cache, a wrong id, a broken folder, ...
            log.warning("cannot load language model %s: %s", self.lm_spec, err)
            self._error = (
                f"Language model {self.lm_spec!r} is not available offline ({type(err).__name__}): "
                "pass --lm with a local folder or a Hub id already in the cache. Transcription still works."
            )
            return False
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        return True

    def continue_text(self, text: str, settings: ContinuationConfig = ContinuationConfig()) -> str:
        """The text the model writes after `text` (without `text` itself), or a message saying why not.

        Raises ValueError for text over `MAX_TEXT_CHARS` (`check_text`), before tokenising."""
        import torch

        text = (text or "").strip()
        if not text:
            return NOTHING_TO_CONTINUE
        check_text(text)
        with self._lock:  # one generate at a time: the model is shared by all requests
            if not self._load_locked():
                return self._error or NO_LM
            tok = self._tokenizer
            # Keep the end of a long transcript, leaving room for the new tokens in the context:
            # at most half the context is new tokens (a 128-position LM asked for 200 would index
            # past its position table).
            context = getattr(self._model.config, "max_position_embeddings", None) or 1024
            new_tokens = max(1, min(settings.max_new_tokens, context // 2))
            keep = max(1, min(MAX_PROMPT_TOKENS, context - new_tokens))
            ids = tok(text[-MAX_PROMPT_CHARS:], return_tensors="pt").input_ids[:, -keep:].to(self.device)
            sample = settings.temperature > 0
            with torch.inference_mode():
                out = self._model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                    do_sample=sample, temperature=settings.temperature if sample else None,
                    top_p=settings.top_p if sample else None, pad_token_id=tok.pad_token_id,
                )
        # A byte-level tokenizer can stop inside a character (the token limit cuts "å" after its first
        # byte) or sample bytes that are no character at all; they decode as U+FFFD, which is no text.
        new = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).replace("\ufffd", "").strip()
        return new or NO_WORDS
