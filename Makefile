# Each function's bundle for `sam build` (template.yaml: Metadata BuildMethod: makefile).
# SAM runs `make build-<LogicalId>` with ARTIFACTS_DIR set (in this directory: samconfig.toml
# sets build_in_source). A bundle is jobstate's core with pynamodb and tenacity (boto3 and
# botocore come with the Lambda Python runtime) plus handlers/__init__.py and the one
# handler module the function runs: no tests/, docs/, benchmarks/ or other handlers.
# See docs/deployment.md; `scripts/lambda_bundle.py check-sam` checks the result.

PYTHON ?= python3
BUNDLE = $(PYTHON) scripts/lambda_bundle.py build --arch arm64 --python 3.11 \
	--out "$(ARTIFACTS_DIR)" --handler

build-FileProcessorFunction:
	$(BUNDLE) s3_file_processor

build-EtlPollerFunction:
	$(BUNDLE) etl_poller

build-BatchMailerFunction:
	$(BUNDLE) batch_mailer

build-SweeperFunction:
	$(BUNDLE) sweeper

build-StatusApiFunction:
	$(BUNDLE) status_api

.PHONY: build-FileProcessorFunction build-EtlPollerFunction build-BatchMailerFunction \
	build-SweeperFunction build-StatusApiFunction
