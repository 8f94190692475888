# Two commands on a fresh machine: `make demo` and `make test`. Both run `setup` first, which is
# idempotent: it installs only what is missing and re-runs only when the requirements change.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# This machine's local CPU wheel; any other torch version pulls a multi-GB CUDA build. On Colab,
# skip `make setup` and `pip install -r requirements.txt -e .` (torch is already there).
TORCH ?= torch==2.13.0
# datasets 5 decodes audio with torchcodec, whose release must match torch: 0.13 <-> torch 2.13.
TORCHCODEC ?= torchcodec==0.13.*
# chromium: the browser test drives Debian's Chromium with Playwright (never `playwright install`).
# postgresql: the search test starts a throw-away PostgreSQL cluster on a loopback port.
DEB_PACKAGES ?= espeak-ng ffmpeg chromium postgresql
# MBROLA's Swedish voices (synth --voices mbrola) live in Debian's contrib/non-free and Ubuntu's
# multiverse: tools/setup_mbrola.sh enables those in a sources file of its own, or says in one line
# why it cannot and lets setup carry on with espeak-ng alone.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := build/.setup-done

.PHONY: setup demo test test-fast figures bench bench-features bench-inference bench-window bench-threads bench-app bench-live bench-search bench-search-cpu bench-ablation app clean help

setup: $(STAMP)  ## install what demo and tests need: Debian packages, MBROLA voices, PyTorch, requirements (idempotent)

$(STAMP): requirements.txt pyproject.toml Makefile tools/setup_mbrola.sh
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	else echo "Debian packages present: $(DEB_PACKAGES)"; fi
	@bash tools/setup_mbrola.sh
	$(PIP) install -q --disable-pip-version-check "$(TORCH)" "$(TORCHCODEC)"
	$(PIP) install -q --disable-pip-version-check -r requirements.txt -e .
	$(PIP) install -q --disable-pip-version-check playwright  # tests only; drives /usr/bin/chromium
	$(PIP) install -q --disable-pip-version-check "psycopg[binary]"  # tests only; the search's PostgreSQL storage
	@mkdir -p $(dir $(STAMP)) && touch $(STAMP)

demo: setup  ## the whole loop on CPU: synthetic corpus, features, WER before, fine-tune, WER after, export
	$(PYTHON) -m whisper_sv.demo

app: setup  ## the Gradio page on http://127.0.0.1:7860
	$(PYTHON) -m whisper_sv.cli app

test: setup  ## the test suite (offline, CPU)
	$(PYTHON) -m pytest -q -ra

test-fast: setup  ## the test suite without the tests marked slow
	$(PYTHON) -m pytest -q -ra -m "not slow"

# Redraws the img/ figures that the notebooks and the browser test draw; tests write theirs to
# temporary folders, never into img/. The two feature notebooks run in the repository root
# (img/log_mels.png, img/log_mels_smoothed.png, img/smoothing.png; they leave corpus/notebook and
# features/notebook*), and the browser tests save img/app.png and img/app_live.png.
figures: setup  ## redraw the img/ figures (log-mels, smoothing, the app's page)
	$(PYTHON) -m jupyter execute --timeout=900 --kernel_name=python3 feature_pipeline.ipynb smoothed_features.ipynb
	$(PYTHON) -m pytest -q tests/test_app_browser.py --figures-dir img

bench: bench-features bench-inference bench-app  ## the three main benchmarks: bench-features, bench-inference and bench-app

# Benchmarks take a lock so two of them never share the 2 cores.
bench-inference: setup  ## faster-whisper int8 vs the Transformers pipeline, 5 s and 60 s clips
	flock /tmp/whisper_sv_bench.lock $(PYTHON) bench/inference.py

bench-window: setup  ## after `make demo`: speed and WER of the app's encoder window (10-30 s) vs faster-whisper's own decode
	flock /tmp/whisper_sv_bench.lock $(PYTHON) bench/encoder_window.py

bench-threads: setup  ## CTranslate2 encoder and decoder at 1 thread vs all cores (base, small-shaped)
	flock /tmp/whisper_sv_bench.lock $(PYTHON) bench/decode_threads.py

bench-app: setup  ## 20 concurrent gradio_client users on 127.0.0.1
	flock /tmp/whisper_sv_bench.lock $(PYTHON) bench/app_load.py

bench-live: setup  ## live transcription: first text, commit lag p50/p95, RTF, one and two sessions (60 s recordings, real-time pace)
	flock /tmp/whisper_sv_bench.lock $(PYTHON) bench/live.py

bench-search: setup  ## ~3 min: crash drill (3 random SIGKILLs) and RSS over 8 trials in one worker
	flock /tmp/whisper_sv_bench.lock $(PYTHON) bench/search_drill.py --trials 6 --kills 3
	flock /tmp/whisper_sv_bench.lock $(PYTHON) bench/search_drill.py --memory --trials 8 --out bench/out/memory

bench-search-cpu: setup  ## ~45 min: configs/search-cpu.json to the end, best trial scored on 100 test clips
	flock /tmp/whisper_sv_bench.lock $(PYTHON) bench/search_cpu.py

bench-ablation: setup  ## hours at the cpu-demo budget: the smoothing grid, bootstrap CIs, img/smoothing_ablation.png
	flock /tmp/whisper_sv_bench.lock $(PYTHON) bench/smoothing_ablation.py

bench-features: setup  ## ~7 min: ours vs the standard datasets.map recipe on 2,000 clips
	flock /tmp/whisper_sv_bench.lock $(PYTHON) bench/features.py

clean:  ## delete build, corpus, features, runs, bench/out and .pytest_cache
	rm -rf build corpus features runs bench/out .pytest_cache

help:  ## list every target with a one-line description
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-zA-Z0-9_.-]+:[^#]*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
