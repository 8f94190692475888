"""Let a Swedish causal language model continue a transcript.

Any Hugging Face causal LM works, by Hub id or local folder (``AutoModelForCausalLM`` +
``AutoTokenizer``); a small open Swedish one is ``AI-Sweden-Models/gpt-sw3-126m``. The model is
loaded lazily on the first request, and a model that is missing or cannot be loaded offline turns
into a plain message on the page instead of an error, so the app still transcribes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

SUGGESTED_LM = "AI-Sweden-Models/gpt-sw3-126m"
NO_LM = (
    "No language model configured: start the app with --lm MODEL (a Hub id such as "
    f"{SUGGESTED_LM} or a local folder) to continue transcripts."
)
NOTHING_TO_CONTINUE = "Nothing to continue: transcribe some Swedish speech (or type text) first."
MAX_NEW_TOKENS = 200  # the slider's top: bounds the work one request can ask for
MAX_PROMPT_TOKENS = 512  # longer transcripts keep their end, which is what gets continued


@dataclass(frozen=True)
class GenerationSettings:
    """The knobs on the page: how much to write and how adventurously."""

    max_new_tokens: int = 40
    temperature: float = 0.8  # 0 = greedy
    top_p: float = 0.95

    def __post_init__(self):
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"length {self.max_new_tokens}: choose 1 to {MAX_NEW_TOKENS} tokens")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature {self.temperature}: choose 0 (greedy) to 2")


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

    def continue_text(self, text: str, settings: GenerationSettings = GenerationSettings()) -> str:
        """The text the model writes after `text` (without `text` itself), or a message saying why not."""
        import torch

        text = (text or "").strip()
        if not text:
            return NOTHING_TO_CONTINUE
        with self._lock:  # one generate at a time: the model is shared by all requests
            if not self._load_locked():
                return self._error or NO_LM
            tok = self._tokenizer
            # Keep the end of a long transcript, leaving room for the new tokens in the context.
            context = getattr(self._model.config, "max_position_embeddings", None) or 1024
            keep = max(1, min(MAX_PROMPT_TOKENS, context - settings.max_new_tokens))
            ids = tok(text, return_tensors="pt").input_ids[:, -keep:].to(self.device)
            sample = settings.temperature > 0
            with torch.inference_mode():
                out = self._model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=settings.max_new_tokens,
                    do_sample=sample, temperature=settings.temperature if sample else None,
                    top_p=settings.top_p if sample else None, pad_token_id=tok.pad_token_id,
                )
        return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
