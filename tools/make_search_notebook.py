"""Write hyperparam_search.ipynb (no outputs). Re-run after editing the cells below."""
from pathlib import Path

import nbformat as nbf

ROOT = Path(__file__).resolve().parents[1]
cells = [
    nbf.v4.new_markdown_cell(
        "# Hyper-parameter search: an Optuna study that finishes\n\n"
        "Each trial is `train(cfg)` in its own run folder under the study folder. The study lives in a file "
        "there too (`study.journal`), so on Colab put `STUDY_DIR` on a mounted Google Drive folder: when the "
        "runtime dies, run all cells again and the search continues. A trial whose worker died resumes from "
        "its last complete checkpoint, not from zero, and the study stops at exactly `TRIALS` finished "
        "(complete or pruned) trials. To share the work between machines, give every worker the same "
        "`STORAGE` (e.g. `postgresql://user:pw@host/db`) and run this notebook, or `whisper-sv search CONFIG "
        "--storage URL`, on each.\n\n"
        "The configuration cell runs `configs/search-tiny.json` (the tiny preset, seconds a trial) on a small "
        "synthetic corpus: what CI executes. For a real search: `SEARCH = \"configs/search-cpu.json\"` on a "
        "CPU, or your own config over `configs/colab-small.json` on a GPU."
    ),
    nbf.v4.new_code_cell(
        "# Install (Colab: clone the repository first, then run this cell; torch is already there).\n"
        "import importlib.util, subprocess, sys\n"
        "if importlib.util.find_spec(\"whisper_sv\") is None:\n"
        "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", \"-r\", \"requirements.txt\", \"-e\", \".\"], check=True)"
    ),
    nbf.v4.new_code_cell(
        "# Configuration: the only cell to edit.\n"
        "SEARCH = \"configs/search-tiny.json\"  # training preset + space + sampler/pruner settings\n"
        "SOURCE = None                         # None: a small synthetic corpus; or \"cv:PATH\", \"hf:ID:CONFIG\"\n"
        "CLIPS = 40                            # synthetic corpus size when SOURCE is None\n"
        "STUDY_DIR = \"runs/nb-search\"          # e.g. /content/drive/MyDrive/whisper-sv/search on Colab\n"
        "TRIALS = 4                            # finished trials to run to\n"
        "STORAGE = None                        # None: a journal file in STUDY_DIR; or any Optuna storage URL\n"
        "OVERRIDES = {}                        # any search setting or training key, e.g. {\"max_steps\": 12}\n"
        "WORKERS = 2"
    ),
    nbf.v4.new_code_cell(
        "# 1. Speech: the synthetic corpus unless a real source is configured.\n"
        "from whisper_sv.synth.corpus import SynthConfig, synthesize\n"
        "if SOURCE is None:\n"
        "    SOURCE = f\"cv:{synthesize('corpus/nb-search', SynthConfig(clips=CLIPS, seed=0), WORKERS)}\"\n"
        "SOURCE"
    ),
    nbf.v4.new_code_cell(
        "# 2. Search (re-run after a crash: finished trials stay, a killed trial resumes from its checkpoint).\n"
        "from whisper_sv.search.study import load_search_config, search\n"
        "cfg = load_search_config(SEARCH, {**OVERRIDES, \"study_dir\": STUDY_DIR, \"trials\": TRIALS, \"storage\": STORAGE,\n"
        "                                  \"features\": {\"source\": SOURCE, \"shard_size\": 16, \"workers\": WORKERS}})\n"
        "result = search(cfg)\n"
        "result"
    ),
    nbf.v4.new_code_cell(
        "# 3. Trials: parameters, state (COMPLETE / PRUNED), WER, minutes.\n"
        "from IPython.display import Image, Markdown, display\n"
        "Markdown(open(result[\"summary\"]).read())"
    ),
    nbf.v4.new_code_cell(
        "# 4. Plots: optimisation history, intermediate values (pruning), importances, parallel coordinates, slices.\n"
        "for png in result[\"plots\"]:\n"
        "    display(Image(filename=png))"
    ),
    nbf.v4.new_code_cell(
        "# 5. The best trial as a training preset: `whisper-sv train STUDY_DIR/best.json` trains it again.\n"
        "from whisper_sv.training.config import load_config\n"
        "load_config(result[\"best_json\"]).to_dict()"
    ),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}})
nbf.write(nb, ROOT / "hyperparam_search.ipynb")
