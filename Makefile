# Everything a fresh machine needs: `make run` and `make test` create the virtualenvs themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The Cloud Tasks emulator pins protobuf<5: it lives in a virtualenv of its own.
TASKS_VENV := .venv-tasks-emulator
TASKS_STAMP := $(TASKS_VENV)/.installed

.PHONY: run test lint install emulators clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(TASKS_STAMP):
	$(PYTHON) -m venv $(TASKS_VENV)
	$(TASKS_VENV)/bin/pip install --quiet gcloud-tasks-emulator==0.6.2
	touch $(TASKS_STAMP)

install: $(STAMP)

# Firestore and Pub/Sub emulators come with the Google Cloud CLI; the tests start them.
emulators: $(TASKS_STAMP)
	@command -v gcloud >/dev/null || echo "NOTE: the Google Cloud CLI is missing, so the emulator \
	tests will be skipped. Install it (https://cloud.google.com/sdk/docs/install) with \
	'gcloud components install cloud-firestore-emulator pubsub-emulator' or Debian's \
	google-cloud-cli-firestore-emulator and google-cloud-cli-pubsub-emulator packages."

run: $(STAMP)
	$(BIN)/shepherd replay seed

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint emulators
	$(BIN)/pytest

clean:
	rm -rf $(VENV) $(TASKS_VENV) .shepherd .pytest_cache .ruff_cache .hypothesis
