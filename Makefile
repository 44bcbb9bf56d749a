# Two entry points on a fresh machine: `make demo` and `make test` (each installs what it needs).
PYTHON ?= python3
STAMP := .install-stamp

.PHONY: demo test install bench-memory

$(STAMP): pyproject.toml
	# torch: keep a CUDA build where one is installed; otherwise the pinned CPU wheel (a few
	# hundred MB) instead of the registry's newest build with several GB of CUDA packages.
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m slfaas.cli.main demo

test: $(STAMP)
	$(PYTHON) -m pytest -q -p no:cacheprovider

bench-memory: $(STAMP)
	$(PYTHON) bench/memory_pss.py
