"""What a run folder tells a reader: metrics, curves, per-utterance errors, the model card.

Written during training (on every log and evaluation) and once at the end:
``metrics.jsonl`` (one history, rewritten from the Trainer's state so a resume does not split
it), ``train.png`` (loss and WER against step), ``evals/step-N.json`` (each eval utterance's
errors, for paired comparisons between runs), and ``final/README.md`` (the Hub model card with
the WER), which `push_final` uploads with the model. In a multi-process job the writers run in the
main process only (`distributed.main_only`): one copy of each file, never two writers at once.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..common.distributed import main_only
from ..common.fileio import write_atomic
from ..common.metrics import utterance_errors, wer_report
from ..data.voices import language_name
from ..models.specs import whisper_language
from .config import TrainConfig

EVALS_DIR = "evals"  # per-utterance errors of each evaluation, step-N.json
CURVES_NAME = "train.png"


def make_compute_metrics(tokenizer) -> Callable[[Any], dict[str, float]]:
    """``compute_metrics`` for predict_with_generate: normalised WER, orthographic WER, CER."""

    def compute_metrics(pred) -> dict[str, float]:
        preds, labels = pred.predictions, pred.label_ids
        if isinstance(preds, tuple):
            preds = preds[0]
        preds = np.where(preds < 0, tokenizer.pad_token_id, preds)
        labels = np.where(labels < 0, tokenizer.pad_token_id, labels)
        hyps = tokenizer.batch_decode(preds, skip_special_tokens=True)
        refs = tokenizer.batch_decode(labels, skip_special_tokens=True)
        report = wer_report(refs, hyps)
        # Kept for the run folder's per-utterance record (evals/step-N.json): paired comparisons
        # between runs (the search's Wilcoxon pruner, the smoothing ablation) need more than the mean.
        compute_metrics.last = {"references": refs, "hypotheses": hyps}
        return {"wer": report["wer"], "wer_ortho": report["wer_ortho"], "cer": report["cer"]}

    compute_metrics.last = None
    return compute_metrics


def plot_curves(log_history: list[dict], out: str | Path) -> Path:
    """Training loss and eval WER against step, in one PNG (like the original notebook's plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h) for h in log_history if "eval_wer" in h]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        ax.plot([s for s, _ in evals], [h["eval_loss"] for _, h in evals], "o-", label="eval loss", color="tab:cyan")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    if evals:
        ax2.plot([s for s, _ in evals], [100 * h["eval_wer"] for _, h in evals], "s-", color="tab:red", label="eval WER (normalised)")
        ax2.plot([s for s, _ in evals], [100 * h["eval_wer_ortho"] for _, h in evals], "^--", color="tab:orange", label="eval WER (orthographic)")
    ax2.set_ylabel("WER (%)")
    # From 0 (an auto-zoomed axis makes a 1-point wobble look like a trend), with room above the top.
    top = max((100 * h[k] for _, h in evals for k in ("eval_wer", "eval_wer_ortho") if k in h), default=0)
    ax2.set_ylim(0, 1.15 * top if top > 0 else None)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    # Below the axes, so it never hides a curve (inside, it sat on the WER line at ~30 %).
    fig.legend(lines, [l.get_label() for l in lines], loc="lower center", ncol=4, frameon=False)
    ax.set_title("Whisper fine-tuning")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image = io.BytesIO()  # redrawn at every evaluation: a kill mid-save must not leave a torn figure
    fig.savefig(image, dpi=110, format=out.suffix.lstrip(".") or None)
    plt.close(fig)
    return write_atomic(out, image.getvalue())


@main_only
def draw_curves(run_dir: Path, log_history: list[dict], figure: str | None = None) -> None:
    """``train.png`` in the run folder, and a copy at `figure` (the configured extra path) if set."""
    plot_curves(log_history, run_dir / CURVES_NAME)
    if figure:
        plot_curves(log_history, figure)


@main_only
def write_metrics(run_dir: Path, log_history: list[dict]) -> None:
    """``metrics.jsonl`` from the Trainer's log history: after a resume it is still one history."""
    write_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in log_history))


@main_only
def write_eval_utterances(run_dir: Path, step: int, references: list[str], hypotheses: list[str]) -> Path | None:
    """``evals/step-N.json``: each eval utterance's normalised word errors and reference words."""
    errors = utterance_errors(references, hypotheses)
    out = run_dir / EVALS_DIR / f"step-{step}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"step": step, "errors": [e for e, _ in errors], "words": [w for _, w in errors], "hypotheses": hypotheses}
    write_atomic(out, json.dumps(record, ensure_ascii=False))
    return out


def read_eval_utterances(run_dir: str | Path, step: int) -> dict[str, Any] | None:
    """What `write_eval_utterances` wrote for `step`, or None."""
    try:
        return json.loads((Path(run_dir) / EVALS_DIR / f"step-{step}.json").read_text())
    except (OSError, ValueError):
        return None


@main_only
def write_model_card(final: Path, cfg: TrainConfig, metrics: dict[str, Any], language: str = "sv") -> Path | None:
    """README.md with the Hub's model-index metadata carrying the eval WER (when there is one), for
    `language` (the labels' language, as configured: sv, nb, ...)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    results = []
    if "eval_wer" in metrics:
        for metric, name in (("eval_wer", "wer"), ("eval_wer_ortho", "wer_ortho"), ("eval_cer", "cer")):
            results.append(
                EvalResult(
                    task_type="automatic-speech-recognition", task_name="Speech Recognition",
                    dataset_type=cfg.eval_data or "", dataset_name=Path(cfg.eval_data or "").name,
                    metric_type=name, metric_name=name.upper().replace("_", " "),
                    metric_value=round(100 * float(metrics[metric]), 2),
                )
            )
    data = ModelCardData(
        language=language, license="mit", library_name="transformers", base_model=_base_model_id(cfg.model),
        tags=["whisper", "automatic-speech-recognition", "whisper-sv"],
        model_name=cfg.hub_model_id or final.parent.name, eval_results=results or None,
    )
    wer_line = (
        f"Normalised WER {100 * metrics['eval_wer']:.2f} % (Whisper's basic normaliser keeping diacritics), "
        f"orthographic WER {100 * metrics['eval_wer_ortho']:.2f} %, CER {100 * metrics['eval_cer']:.2f} %."
        if "eval_wer" in metrics else "No evaluation set was configured."
    )
    card = ModelCard(
        f"---\n{data.to_yaml()}\n---\n\n# {data.model_name}\n\nWhisper fine-tuned on {language_name(language)} with "
        f"whisper-sv from `{cfg.model}` on `{cfg.train_data}`.\n\n{wer_line}\n\n"
        f"Served with {language_name(language)} forced (`language=\"{whisper_language(language)}\"`, `task=\"transcribe\"`) "
        "and without timestamps.\n"
    )
    return write_atomic(final / "README.md", str(card))  # what card.save writes, atomically


def _base_model_id(spec: str) -> str | None:
    """The Hub id the card names as base model: a Hub spec itself, the packaged model's origin, or None."""
    if spec.startswith("packaged:"):
        return "openai/whisper-base"
    return spec if spec.count("/") == 1 and not Path(spec).exists() else None


@main_only
def push_final(final: Path, repo_id: str) -> None:
    """Upload ``final/`` (model, processor, card) to the Hub."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(final), repo_id=repo_id, commit_message="whisper-sv fine-tune")
    except Exception as err:  # no network, no token: say so, keep the local model
        raise RuntimeError(
            f"could not push {final} to {repo_id} ({err}); log in with `hf auth login` and re-run, "
            "or upload the folder later: the trained model is safe on disk"
        ) from err
