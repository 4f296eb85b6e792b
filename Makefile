# Two entry points: `make demo` and `make test`. Both set up .venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup sysdeps demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

# espeak-ng synthesises the spoken corpora used by the speech tests, demo and benchmarks; chromium and
# chromium-driver run the curation page's browser test (headless).
sysdeps:
	@command -v espeak-ng >/dev/null && command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq espeak-ng chromium chromium-driver >/dev/null; }

setup: sysdeps $(STAMP)

demo: setup
	$(PY) tools/demo.py --out runs/demo

test: setup
	$(PY) -m ruff check multissl tests tools
	$(VENV)/bin/lint-imports
	$(PY) -m pytest tests

bench: setup
	$(PY) tools/bench_text.py

clean:
	rm -rf runs out
