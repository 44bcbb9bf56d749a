# Two entry points on a fresh machine: `make demo` and `make test` (each installs what it needs).
PYTHON ?= python3
STAMP := .install-stamp

.PHONY: demo test install bench-memory docker-setup bwrap-setup postgres-setup test-docker bench-cold-start

$(STAMP): pyproject.toml
	# torch: keep a CUDA build where one is installed; otherwise the pinned CPU wheel (a few
	# hundred MB) instead of the registry's newest build with several GB of CUDA packages.
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP) bwrap-setup

# Process sandboxes are isolated with bubblewrap: installed with apt as root, or unpacked from
# its Debian package where there is no registry (SLFAAS_BWRAP_DEB=bubblewrap_*.deb).
bwrap-setup:
	bash scripts/ensure-bwrap.sh

demo: $(STAMP) bwrap-setup
	$(PYTHON) -m slfaas.cli.main demo

# Docker sandboxes need an engine and the runtime image (built locally, no registry):
# docker/ensure-engine.sh. With CI=true it installs docker.io, starts dockerd and builds the
# image, failing on any error; elsewhere it starts an installed dockerd when run as root, and
# otherwise exits 3: the Docker tests then skip, saying why.
docker-setup: $(STAMP)
	PYTHON=$(PYTHON) bash docker/ensure-engine.sh || [ $$? -eq 3 ]

# The registry, persistence and billing suites also run on a private PostgreSQL that the tests
# start themselves from Debian's postgresql package: scripts/ensure-postgres.sh. With CI=true it
# installs the package (as root), failing on any error; elsewhere it only checks, and exits 3
# when PostgreSQL is missing: those tests then skip, saying why (never in CI).
postgres-setup: $(STAMP)
	bash scripts/ensure-postgres.sh || [ $$? -eq 3 ]

test: $(STAMP) bwrap-setup docker-setup postgres-setup
	$(PYTHON) -m pytest -q -p no:cacheprovider

# The vertical slice's boto3 integration tests again, every function instance a Docker
# container (the API-parity suites exercise the control plane, not the sandbox: run once).
SLICE_TESTS := tests/integration/test_lambda_api.py tests/integration/test_bad_input.py \
	tests/integration/test_greedy.py tests/integration/test_isolation.py \
	tests/integration/test_persistence.py tests/integration/test_keep_alive.py \
	tests/integration/test_logs.py tests/integration/test_cli_live.py tests/integration/test_prewarmed.py \
	tests/security
test-docker: $(STAMP)
	PYTHON=$(PYTHON) bash docker/ensure-engine.sh
	SLFAAS_TEST_SANDBOX=docker $(PYTHON) -m pytest -q -p no:cacheprovider $(SLICE_TESTS)

bench-memory: $(STAMP) bwrap-setup
	$(PYTHON) bench/memory_pss.py

bench-cold-start: $(STAMP) bwrap-setup
	$(PYTHON) bench/cold_start.py
