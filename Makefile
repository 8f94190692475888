# Two commands on a fresh machine: `make demo` and `make test`. Both run `setup` first, which is
# idempotent: it installs only what is missing and re-runs only when the requirements change.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# This machine's local CPU wheel; any other torch version pulls a multi-GB CUDA build. On Colab,
# skip `make setup` and `pip install -r requirements.txt -e .` (torch is already there).
TORCH ?= torch==2.13.0
# datasets 5 decodes audio with torchcodec, whose release must match torch: 0.13 <-> torch 2.13.
TORCHCODEC ?= torchcodec==0.13.*
DEB_PACKAGES ?= espeak-ng ffmpeg
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := build/.setup-done

.PHONY: setup demo test test-fast bench bench-features clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml Makefile
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	else echo "Debian packages present: $(DEB_PACKAGES)"; fi
	$(PIP) install -q --disable-pip-version-check "$(TORCH)" "$(TORCHCODEC)"
	$(PIP) install -q --disable-pip-version-check -r requirements.txt -e .
	@mkdir -p $(dir $(STAMP)) && touch $(STAMP)

demo: setup
	$(PYTHON) -m whisper_sv.demo

test: setup
	$(PYTHON) -m pytest -q -ra

test-fast: setup
	$(PYTHON) -m pytest -q -ra -m "not slow"

bench: bench-features

bench-features: setup  # ~7 min: ours vs the standard datasets.map recipe on 2,000 clips
	$(PYTHON) bench/features.py

clean:
	rm -rf build corpus features runs bench/out .pytest_cache
