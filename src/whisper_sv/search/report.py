"""What a search leaves behind: ``best.json``, ``summary.md``/``.csv`` and the study's plots.

`best.json` is the best trial's resolved training config with a fresh ``output_dir``, so
``whisper-sv train STUDY/best.json`` trains the best trial again (the same weights: training is
seeded). The plots are Optuna's own (``optuna.visualization.matplotlib``) as PNGs in ``img/``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

from ..common.fileio import write_atomic, write_json

log = logging.getLogger(__name__)

PLOTS = ("optimization_history", "intermediate_values", "param_importances", "parallel_coordinate", "slice")


def counts(study) -> dict[str, int]:
    """Trials by state; trials discarded before they ran (past the count, twin retries) apart."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        state = "DISCARDED" if t.user_attrs.get("discarded") else t.state.name
        out[state] = out.get(state, 0) + 1
    return out


def run_dir(study_dir: str | Path, trial) -> Path | None:
    """A trial's run folder in the study folder as it is now: a folder copied or renamed since the
    trial ran keeps its trials (``trials/NAME``); the recorded path where that is not there."""
    recorded = trial.user_attrs.get("run_dir")
    if not recorded:
        return None
    here = Path(study_dir) / "trials" / Path(recorded).name
    return here if here.is_dir() else Path(recorded)


def trial_rows(study, study_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per trial that ran (discarded ones left out), in trial order; WER in percent."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("discarded"):
            continue
        note = t.user_attrs.get("error", "")
        if "retry_of" in t.user_attrs:
            note = f"resumes trial {t.user_attrs['retry_of']}" + (f"; {note}" if note else "")
        elif t.state.name == "FAIL" and t.user_attrs.get("resume"):
            note = "worker died; resumed by a later trial"
        rows.append({
            "trial": t.number, "state": t.state.name, **{f"param:{k}": v for k, v in t.params.items()},
            # A pruned trial's value is its last reported WER (Optuna's rule): the one it was stopped at.
            "wer": None if t.value is None else round(100 * t.value, 2),
            "minutes": t.user_attrs.get("minutes"), "rss_mb": t.user_attrs.get("rss_mb"),
            "peak_rss_mb": t.user_attrs.get("peak_rss_mb"),
            "run_dir": str(run_dir(study_dir, t) or "") if study_dir is not None else t.user_attrs.get("run_dir"), "note": note,
        })
    return rows


def write_results(study, cfg) -> dict[str, Any]:
    """Write best.json, summary.md/.csv and the plots into the study folder; returns the outcome."""
    study_dir = Path(cfg.study_dir)
    rows = trial_rows(study, study_dir)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(study_dir / "summary.csv", table.getvalue())
    tally = counts(study)
    finished = tally.get("COMPLETE", 0) + tally.get("PRUNED", 0)
    outcome: dict[str, Any] = {"study_dir": str(study_dir), "finished": finished, "counts": tally}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]
    best = min(complete, key=lambda t: t.value) if complete else None
    if best is not None:
        best_dir = run_dir(study_dir, best)
        preset = json.loads((best_dir / "config.json").read_text())
        preset.update(output_dir=str(study_dir / "best"))
        write_json(study_dir / "best.json", preset)
        outcome["best"] = {"trial": best.number, "wer": best.value, "params": best.params, "run_dir": str(best_dir)}
        outcome["best_json"] = str(study_dir / "best.json")
    md = [f"# Study `{study.study_name}`", "", f"{finished} finished trials ({', '.join(f'{k} {v}' for k, v in sorted(tally.items()))}).", ""]
    if best is not None:
        md += [f"Best: trial {best.number}, WER {100 * best.value:.2f} %, {best.params}; `whisper-sv train {study_dir / 'best.json'}` trains it again.", ""]
    md += ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    md += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    write_atomic(study_dir / "summary.md", "\n".join(md) + "\n")
    outcome["summary"] = str(study_dir / "summary.md")
    outcome["plots"] = [str(p) for p in write_plots(study, study_dir / "img")]
    return outcome


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_plots(study, folder: Path) -> list[Path]:
    """Optuna's matplotlib plots of the study as PNGs; a plot the study cannot make yet is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # "categorical units" notes, per plot
    written = []
    for name in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" warnings, once per plot
                ax = getattr(ovm, f"plot_{name}")(study)
        except Exception as err:  # e.g. importances need two finished trials that differ
            log.info("search plot %s skipped: %s", name, err)
            continue
        first = ax.flat[0] if hasattr(ax, "flat") else ax
        fig = first.figure
        fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 4.5))
        out = folder / f"{name}.png"
        image = io.BytesIO()
        fig.savefig(image, dpi=100, bbox_inches="tight", format="png")
        plt.close(fig)
        write_atomic(out, image.getvalue())
        written.append(out)
    plt.close("all")
    return written
