# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need first.
.PHONY: setup demo test unit lint protos bench

setup:
	@deploy/local/setup.sh

demo: setup
	.venv/bin/modelmesh-demo

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy mesh harness runtime_adapters load_tests

test: setup lint
	.venv/bin/pytest -q

# The pure tests alone (no etcd, runtimes or pods): seconds.
unit: setup
	.venv/bin/pytest -q -m "not integration"

protos: setup
	.venv/bin/python -m protos.generate

# The performance harness (load_tests/): quick by default; `make bench ARGS=--full` for the long run.
bench: setup
	.venv/bin/python -m load_tests.run $(ARGS)
