# Set-up and entry points. Every target is idempotent and works on a brand-new machine as root.
#   make demo   system packages, .venv, BPF build, then the simulated demo
#   make test   the same set-up, then the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INTEROP_VENV := .venv-interop
SYS_PACKAGES := clang llvm libbpf-dev bpftool iproute2 tcpdump
PYTEST_ARGS ?=

.PHONY: all setup sysdeps venv interop-venv bpf test lint demo doctor clean

all: setup

setup: sysdeps venv interop-venv bpf

# System packages: installed only when something is missing, so a second run costs nothing.
sysdeps:
	@missing=""; \
	for c in clang llc bpftool ip tc tcpdump; do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	[ -f /usr/include/bpf/libbpf.h ] || missing="$$missing libbpf-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages (missing:$$missing)"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install: $(SYS_PACKAGES)" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYS_PACKAGES); \
	fi

$(VENV)/.installed: pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

# aiomoqt 0.5.3 (the independent MoQT peer) needs qh3<2; it lives in its own venv so it cannot
# disturb the project's dependencies.
$(INTEROP_VENV)/.installed:
	@[ -x $(INTEROP_VENV)/bin/python ] || $(PYTHON) -m venv $(INTEROP_VENV)
	$(INTEROP_VENV)/bin/python -m pip install -q 'aiomoqt==0.5.3' 'qh3<2'
	@touch $@

interop-venv: $(INTEROP_VENV)/.installed

bpf: sysdeps
	$(MAKE) -s -C bpf

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy hal bpf crypto_offload relay sim

demo: setup
	$(VENV)/bin/relay demo --hal sim --fast-path both

doctor: venv
	$(VENV)/bin/relay doctor

clean:
	$(MAKE) -s -C bpf clean
	rm -rf $(VENV) $(INTEROP_VENV) .pytest_cache .mypy_cache .ruff_cache
