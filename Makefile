# The one pre-push check, and what CI runs: `make test`.
CARGO ?= cargo

.PHONY: test deps check unit mount

test: deps check unit mount

# Debian packages the tests drive as a user would (needs root, as CI has).
deps:
	contrib/install-deps.sh

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --profile ci --lib --bins

mount:
	$(CARGO) test --profile ci --tests
