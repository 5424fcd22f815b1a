# The two set-up commands of the README: `make run` and `make test`. Each installs what it needs
# into .venv first (from the pinned requirements), so a fresh clone needs only Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test demo lint format clean proto

# The last step installs the `certs` client (certs_cli, editable) as $(BIN)/certs, building it
# with the venv's own setuptools so that no download is needed.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "pip<26.3"  # chalice 1.34 requires pip<26.3
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

## Run the whole service locally on 127.0.0.1 (PORT, default 8000).
run: $(STAMP)
	$(BIN)/python -m devstack $(ARGS)

## A scripted day of a small market on a stack of its own, with registry faults; checks I1-I6.
demo: $(STAMP)
	$(BIN)/python -m devstack.demo $(ARGS)

## Lint, check formatting, and run the test suite.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

## The deterministic simulation (tests/simulation) over SEEDS seeds from START, both registry
## modes, every core; prints progress, a summary, and the command replaying each failing seed.
## BOOK=memory (the in-memory book), dynamo (the DynamoDB book on moto) or both.
SEEDS ?= 200
START ?= 0
STEPS ?= 100
BOOK ?= memory
.PHONY: soak
soak: $(STAMP)
	$(BIN)/python -m tests.simulation --seeds $(SEEDS) --start $(START) --steps $(STEPS) --book $(BOOK)

## Benchmarks and the cost model (bench/README.md): calls and capacity per command, USD per
## million, the worker at scale in virtual time, the embedded stack's throughput, a profile.
## Writes bench/results/ and the table in bench/README.md. BENCH_ARGS="--only calls,cost".
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Deploying to AWS (docs/DEPLOY.md). STAGE is a stage of .chalice/config.json: dev or prod.
STAGE ?= dev
STACK ?= certificates-domain-$(STAGE)
DEPLOY_BUCKET ?=

.PHONY: package lint-template deploy

## Package STAGE for AWS: build/$(STAGE)/sam.json (SAM, infra/resources.json merged in),
## deployment.zip (the code) and layer-deployment.zip (the dependencies: Linux wheels from PyPI,
## fetched again only when requirements.txt changes).
package: $(STAMP)
	$(BIN)/python infra/package.py --stage $(STAGE) --out build/$(STAGE)

## The infrastructure scanner, checkov, in a venv of its own (.venv-scan, from the pin in
## requirements-scan.txt): its dependency tree is large and pins much of what the app pins.
## pip -qq: errors only (pip warns once per package about index locations it skips).
SCAN_VENV := .venv-scan
SCAN_STAMP := $(SCAN_VENV)/.installed

$(SCAN_STAMP): requirements-scan.txt
	@echo "installing the template scanner (requirements-scan.txt) into $(SCAN_VENV), 1-3 minutes"
	@$(PYTHON) -m venv $(SCAN_VENV)
	@$(SCAN_VENV)/bin/python -m pip install --quiet --quiet "pip<26.3"
	@$(SCAN_VENV)/bin/python -m pip install --quiet --quiet -r requirements-scan.txt
	@touch $(SCAN_STAMP)

## Package STAGE and check the template (offline): cfn-lint must report nothing, and checkov
## must fail no check (a check that does not fit is skipped in the template, with its reason:
## docs/DEPLOY.md, "Security scan"). CI runs it for every stage.
lint-template: package $(SCAN_STAMP)
	$(BIN)/cfn-lint build/$(STAGE)/sam.json
	$(SCAN_VENV)/bin/checkov --file build/$(STAGE)/sam.json --framework cloudformation \
		--compact --quiet --skip-download

## Deploy STAGE to the account of your AWS credentials: needs the AWS CLI, DEPLOY_BUCKET (an S3
## bucket in the target region for the code) and no REPLACE-ME left in .chalice/config.json.
deploy: $(STAMP)
	@test -n "$(DEPLOY_BUCKET)" || { echo "set DEPLOY_BUCKET=<S3 bucket for the code>; see docs/DEPLOY.md" >&2; exit 1; }
	$(BIN)/python infra/package.py --stage $(STAGE) --out build/$(STAGE) --deployable
	$(BIN)/cfn-lint build/$(STAGE)/sam.json
	aws cloudformation package --template-file build/$(STAGE)/sam.json \
		--s3-bucket $(DEPLOY_BUCKET) --s3-prefix $(STACK) --use-json \
		--output-template-file build/$(STAGE)/packaged.json
	# The template is over CloudFormation's 51,200-byte inline limit: it goes through S3 too.
	aws cloudformation deploy --template-file build/$(STAGE)/packaged.json \
		--stack-name $(STACK) --s3-bucket $(DEPLOY_BUCKET) --s3-prefix $(STACK) \
		--capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --no-fail-on-empty-changeset \
		$(if $(DEPLOY_PARAMETERS),--parameter-overrides $(DEPLOY_PARAMETERS))
	aws cloudformation describe-stacks --stack-name $(STACK) --query "Stacks[0].Outputs" --output table

## Regenerate the registry's gRPC/protobuf stubs from chalicelib/registry/proto/**/*.proto (the
## stubs are committed, so only a change to a .proto needs this; needs grpcio-tools, a dev pin).
PROTOS := $(shell find chalicelib/registry/proto -name '*.proto' | sort)
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

clean:
	rm -rf $(VENV) $(SCAN_VENV) build .pytest_cache .ruff_cache .hypothesis
