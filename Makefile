# Developer and CI entry points. Everything runs in ./.venv, where the project is installed non-editably, so the
# tests exercise the installed package (including the protobuf start-up hook, see README "protobuf").
#
#   make install    create .venv, install torch (pinned, once) and then the project with its test extras
#   make test       the fast test suite (what CI runs)
#   make test-all   every test, including those marked slow
#   make test-slow  only the slow end-to-end tests (kill -9 resumes, ranks, loopback clusters, benchmarks)
#   make run        the main experiment
#   make bench      the round-overhead benchmark (quick mode)
#   make clean      remove build output, caches, EasyFL's logs/ and cached partitions (keeps runs/ and .venv;
#                   `make distclean` also removes .venv)

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
TORCH_VERSION := 2.14.1
TORCHVISION_VERSION := 0.29.1
# -P: the current folder is not put on sys.path, so `import fedcmd_plugin` is the installed copy, not ./fedcmd_plugin
PYTEST := $(VPY) -P -m pytest
PYTEST_ARGS ?=
RUN_CONFIGS ?= configs/fedcmd_digits.yaml configs/fedavg_digits.yaml configs/fedureid_synthetic.yaml
STAMP := $(VENV)/.installed

.PHONY: install venv torch test test-all test-slow run bench clean distclean

install: torch
	rm -rf build *.egg-info
	$(PIP) install '.[test]'
	rm -rf build *.egg-info
	@touch $(STAMP)

# `make run` and `make test` install first on a fresh machine (and again when the project's files change).
$(STAMP): setup.py $(shell find fedcmd_plugin -name '*.py' -o -name '*.yaml' 2>/dev/null) fedcmd_plugin_protobuf.pth
	$(MAKE) install

venv:
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)

# torch is installed before the project so that pip takes the pinned builds and never re-resolves them;
# nothing is reinstalled when the pinned versions are already there.
torch: venv
	@if $(VPY) -c "import sys; from importlib.metadata import version as v; \
	    sys.exit(not (v('torch').split('+')[0] == '$(TORCH_VERSION)' and \
	                  v('torchvision').split('+')[0] == '$(TORCHVISION_VERSION)'))" 2>/dev/null; then \
	  echo "torch $(TORCH_VERSION) and torchvision $(TORCHVISION_VERSION) already installed"; \
	else \
	  $(PIP) install torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION); \
	fi

test: $(STAMP)
	$(PYTEST) -q $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PYTEST) -q -m "slow or not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PYTEST) -q -m slow $(PYTEST_ARGS)

run: $(STAMP)
	$(VPY) -m fedcmd_plugin run $(RUN_CONFIGS)

bench: $(STAMP)
	$(VPY) benchmarks/round_overhead.py --quick

clean:
	rm -rf build dist *.egg-info logs data/partitions .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
