# SAM stack checks, included by the Makefile (`include mk/sam.mk`).
#   make sam-venv        SAM CLI + cfn-lint, and checkov, each in a venv of its own under $(CACHE)
#   make template-check  cfn-lint, sam validate --lint, checkov: all clean or it fails
#   make sam-build       sam build into $(SAM_BUILD_DIR), then checks and sizes the layer
#   make template-test   pytest tests/template: moto deploy, policies, and the three above
#   make dist-sam        the packaged SAM template of a release: sam build, then mk/sam_dist.py (offline, no S3)
# SAM CLI pins boto3, click and pydantic and checkov pins an older boto3: neither can share the
# dev venv, nor each other's. Every tool runs offline: no telemetry, a fixed region, fake
# credentials, no profile or config file.

CACHE ?= $(HOME)/.cache/airflow-dataset-forwarder
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# The function's and the layer's Lambda runtime (template.yaml Runtime, CompatibleRuntimes). `sam build` and the
# layer's Makefile need that Python on PATH under its own name: RUNTIME_BIN holds just a `python3.13` link to it
# (a working one on PATH, else pyenv's), so no other `python`/`python3` on PATH is shadowed.
LAMBDA_RUNTIME := python3.13
RUNTIME_PYTHON ?= $(firstword $(shell $(LAMBDA_RUNTIME) -c 'import sys; print(sys.executable)' 2>/dev/null) \
	$(wildcard $(HOME)/.pyenv/versions/3.13*/bin/$(LAMBDA_RUNTIME)))
RUNTIME_BIN := $(CACHE)/runtime-bin
WITH_RUNTIME_PYTHON = PATH="$(RUNTIME_BIN):$$PATH"

SAM_PINS := aws-sam-cli==1.170.0 aws-sam-translator==1.115.0 cfn-lint==1.58.0
CHECKOV_PINS := checkov==3.3.30
SAM_VENV := $(CACHE)/venv-sam-$(shell echo '$(SAM_PINS)' | sha256sum | cut -c1-12)
CHECKOV_VENV := $(CACHE)/venv-checkov-$(shell echo '$(CHECKOV_PINS)' | sha256sum | cut -c1-12)
SAM_BUILD_DIR ?= $(or $(TMPDIR),/tmp)/airflow-dataset-forwarder-sam

OFFLINE_AWS := env -u AWS_PROFILE -u AWS_ENDPOINT_URL SAM_CLI_TELEMETRY=0 \
	AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1 \
	AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing \
	AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
	CKV_SKIP_PACKAGE_UPDATE_CHECK=true BC_SKIP_MAPPING=TRUE

.PHONY: sam-venv runtime-python template-check sam-build template-test dist-sam clean-sam-venvs

runtime-python:
	@test -n "$(RUNTIME_PYTHON)" || { echo "sam build needs $(LAMBDA_RUNTIME) (the Lambda runtime): install it, \
		e.g. pyenv install 3.13, or set RUNTIME_PYTHON=/path/to/$(LAMBDA_RUNTIME)" >&2; exit 2; }
	@mkdir -p $(RUNTIME_BIN) && ln -sfn $(RUNTIME_PYTHON) $(RUNTIME_BIN)/$(LAMBDA_RUNTIME)
	@$(RUNTIME_BIN)/$(LAMBDA_RUNTIME) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' \
		|| { echo "$(RUNTIME_PYTHON) is not Python 3.13" >&2; exit 2; }

sam-venv: $(SAM_VENV)/.installed $(CHECKOV_VENV)/.installed

$(SAM_VENV)/.installed:
	@echo "==> creating SAM venv $(SAM_VENV)"
	rm -rf $(SAM_VENV)
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(SAM_PINS)
	touch $@

$(CHECKOV_VENV)/.installed:
	@echo "==> creating checkov venv $(CHECKOV_VENV)"
	rm -rf $(CHECKOV_VENV)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(CHECKOV_PINS)
	touch $@

template-check: sam-venv
	$(OFFLINE_AWS) $(SAM_VENV)/bin/cfn-lint template.yaml
	$(OFFLINE_AWS) $(SAM_VENV)/bin/sam validate --lint --template-file template.yaml
	$(OFFLINE_AWS) $(CHECKOV_VENV)/bin/checkov -f template.yaml --framework cloudformation \
		--skip-download --compact --quiet

sam-build: sam-venv runtime-python
	rm -rf $(SAM_BUILD_DIR)/build
	$(OFFLINE_AWS) $(WITH_RUNTIME_PYTHON) $(SAM_VENV)/bin/sam build --template-file template.yaml \
		--build-dir $(SAM_BUILD_DIR)/build --cache-dir $(SAM_BUILD_DIR)/cache
	$(SAM_VENV)/bin/python -m devkit.layer_report $(SAM_BUILD_DIR)/build

template-test: venv sam-venv runtime-python
	SAM_VENV=$(SAM_VENV) CHECKOV_VENV=$(CHECKOV_VENV) $(WITH_RUNTIME_PYTHON) \
		$(PY) -m pytest tests/template $(PYTEST_ARGS)

# The release's template and the zips it points at, in $(DIST_DIR) (Makefile `dist`): what `sam package` would
# upload, without S3. Publish with `sam deploy --template-file $(SAM_DIST)/template.yaml --resolve-s3 --guided`.
dist-sam: sam-venv runtime-python
	rm -rf $(SAM_BUILD_DIR)/dist-build
	$(OFFLINE_AWS) $(WITH_RUNTIME_PYTHON) $(SAM_VENV)/bin/sam build --template-file template.yaml \
		--build-dir $(SAM_BUILD_DIR)/dist-build --cache-dir $(SAM_BUILD_DIR)/cache
	$(SAM_VENV)/bin/python -m devkit.layer_report $(SAM_BUILD_DIR)/dist-build
	$(SAM_VENV)/bin/python mk/sam_dist.py $(SAM_BUILD_DIR)/dist-build $(SAM_DIST)

clean-sam-venvs:
	rm -rf $(CACHE)/venv-sam-* $(CACHE)/venv-checkov-*
