# SAM stack checks, included by the Makefile (`include mk/sam.mk`).
#   make sam-venv        SAM CLI + cfn-lint, and checkov, each in a venv of its own under $(CACHE)
#   make template-check  cfn-lint, sam validate --lint, checkov: all clean or it fails
#   make sam-build       sam build into $(SAM_BUILD_DIR), then checks and sizes the layer
#   make template-test   pytest tests/template: moto deploy, policies, and the three above
# SAM CLI pins boto3, click and pydantic and checkov pins an older boto3: neither can share the
# dev venv, nor each other's. Every tool runs offline: no telemetry, a fixed region, fake
# credentials, no profile or config file.

CACHE ?= $(HOME)/.cache/airflow-dataset-forwarder
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# sam build needs the function's runtime on PATH (python3.11), as does the layer's Makefile.
PYTHON311 ?= $(shell command -v python3.11)

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
WITH_PYTHON311 = PATH="$(dir $(PYTHON311)):$$PATH"

.PHONY: sam-venv template-check sam-build template-test clean-sam-venvs

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

sam-build: sam-venv
	@test -n "$(PYTHON311)" || { echo "sam build needs python3.11 on PATH" >&2; exit 2; }
	rm -rf $(SAM_BUILD_DIR)/build
	$(OFFLINE_AWS) $(WITH_PYTHON311) $(SAM_VENV)/bin/sam build --template-file template.yaml \
		--build-dir $(SAM_BUILD_DIR)/build --cache-dir $(SAM_BUILD_DIR)/cache
	$(SAM_VENV)/bin/python -m tests.template.layer_report $(SAM_BUILD_DIR)/build

template-test: venv sam-venv
	@test -n "$(PYTHON311)" || { echo "sam build needs python3.11 on PATH" >&2; exit 2; }
	SAM_VENV=$(SAM_VENV) CHECKOV_VENV=$(CHECKOV_VENV) $(WITH_PYTHON311) \
		$(PY) -m pytest tests/template $(PYTEST_ARGS)

clean-sam-venvs:
	rm -rf $(CACHE)/venv-sam-* $(CACHE)/venv-checkov-*
