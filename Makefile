# Two commands on a fresh machine:  `make bench` (main job)  and  `make test`.
# Both create .venv, install bpfree with pinned CPU torch, and work offline.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUITE  ?= quick

.PHONY: install bench test test-all data clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,tune]'
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST for the main job: BPFREE_DATA_DIR if set, else Debian's dataset-fashion-mnist
# package (installed here when we are root or have passwordless sudo), else bpfree explains.
data:
	@if [ -z "$${BPFREE_DATA_DIR:-}" ] && [ ! -e /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q dataset-fashion-mnist >/dev/null || true; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	    sudo apt-get install -y -q dataset-fashion-mnist >/dev/null || true; \
	  fi; \
	fi

bench: install data
	$(VENV)/bin/bpfree bench --suite $(SUITE)

test: install
	$(PY) -m pytest -m "not slow" --timeout 600

test-all: install
	$(PY) -m pytest --timeout 1800

clean:
	rm -rf $(VENV) results .pytest_cache
