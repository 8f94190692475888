"""Write training_pipeline.ipynb (no outputs). Re-run after editing the cells below."""

from pathlib import Path

import nbformat as nbf

ROOT = Path(__file__).resolve().parents[1]

cells = [
    nbf.v4.new_markdown_cell(
        "# Training pipeline: fine-tune Whisper on Swedish, resumable\n\n"
        "Feature store -> `Seq2SeqTrainer` -> WER (normalised keeping å/ä/ö, orthographic, CER) -> "
        "CTranslate2 export. Re-running the training cell after a crash resumes from the last *complete* "
        "checkpoint in `OUTPUT_DIR`.\n\n"
        "The configuration cell runs the `tiny` preset on a small synthetic corpus (what CI executes). "
        "For a real run on a Colab GPU: `PRESET = \"configs/colab-small.json\"` (openai/whisper-small, "
        "lr 1e-5, 4000 steps, fp16), and `SOURCE = \"cv:/content/cv-corpus-sv\"` (a Common Voice release "
        "folder) or `\"hf:google/fleurs:sv_se\"`."
    ),
    nbf.v4.new_code_cell(
        "# Install (Colab: clone the repository first, then run this cell; torch is already there).\n"
        "import importlib.util, subprocess, sys\n"
        "if importlib.util.find_spec(\"whisper_sv\") is None:\n"
        "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", \"-r\", \"requirements.txt\", \"-e\", \".\"], check=True)"
    ),
    nbf.v4.new_code_cell(
        "# Configuration: the only cell to edit.\n"
        "PRESET = \"configs/tiny.json\"     # configs/cpu-demo.json on a CPU, configs/colab-small.json on a GPU\n"
        "SOURCE = None                     # None: build a small synthetic corpus; or \"cv:PATH\", \"hf:ID:CONFIG\"\n"
        "CLIPS = 40                        # synthetic corpus size when SOURCE is None\n"
        "FEATURES = \"features/nb-train\"   # feature stores go in FEATURES/train and FEATURES/dev\n"
        "OUTPUT_DIR = \"runs/nb-train\"\n"
        "OVERRIDES = {\"max_steps\": 4, \"eval_steps\": 4, \"save_steps\": 2}  # any preset key, e.g. learning_rate\n"
        "WORKERS = 2"
    ),
    nbf.v4.new_code_cell(
        "# 1. Speech: the synthetic corpus unless a real source is configured.\n"
        "from whisper_sv.synth.corpus import SynthConfig, synthesize\n"
        "if SOURCE is None:\n"
        "    SOURCE = f\"cv:{synthesize('corpus/nb-train', SynthConfig(clips=CLIPS, seed=0), WORKERS)}\"\n"
        "SOURCE"
    ),
    nbf.v4.new_code_cell(
        "# 2. Features (resumable; re-running skips finished shards).\n"
        "from whisper_sv.training.config import load_config\n"
        "from whisper_sv.data.feature_config import FeatureConfig\n"
        "from whisper_sv.features.build import build_features\n"
        "cfg = load_config(PRESET, {**OVERRIDES, \"train_data\": f\"{FEATURES}/train\", \"eval_data\": f\"{FEATURES}/dev\", \"output_dir\": OUTPUT_DIR})\n"
        "feature_config = FeatureConfig(model=cfg.model)\n"
        "for split in (\"train\", \"dev\"):\n"
        "    print(build_features(SOURCE, split, f\"{FEATURES}/{split}\", feature_config, workers=WORKERS))"
    ),
    nbf.v4.new_code_cell(
        "# 3. Train (re-run this cell after a crash: it resumes from the last complete checkpoint).\n"
        "from whisper_sv.training.train import train\n"
        "result = train(cfg)\n"
        "result"
    ),
    nbf.v4.new_code_cell(
        "# 4. Curves: training loss and eval WER against step.\n"
        "from IPython.display import Image\n"
        "Image(filename=f\"{OUTPUT_DIR}/train.png\")"
    ),
    nbf.v4.new_code_cell(
        "# 5. Evaluate the final model: JSON report + per-utterance CSV.\n"
        "from whisper_sv.evaluation.evaluate import evaluate\n"
        "report = evaluate(str(result[\"final\"]), f\"{FEATURES}/dev\", out=f\"{OUTPUT_DIR}/dev.json\")\n"
        "{k: report[k] for k in (\"wer\", \"wer_ortho\", \"cer\", \"n\")}"
    ),
    nbf.v4.new_code_cell(
        "# 6. Export for faster-whisper (int8 on CPU, float16 on GPU).\n"
        "from whisper_sv.serving.export import export_ct2\n"
        "export_ct2(str(result[\"final\"]), f\"{OUTPUT_DIR}/ct2\", quantization=\"int8\", force=True)"
    ),
]

nb = nbf.v4.new_notebook(cells=cells, metadata={
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
})
nbf.write(nb, ROOT / "training_pipeline.ipynb")
print("wrote training_pipeline.ipynb")
