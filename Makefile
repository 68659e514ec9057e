# The one pre-push check, and what CI runs: `make test`.
CARGO ?= cargo

.PHONY: test deps check suite

test: deps check suite

# Debian packages the tests drive as a user would (needs root, as CI has).
deps:
	contrib/install-deps.sh

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# Unit, property, crash and mount tests (mount-tests/ needs root, /dev/fuse
# and loop devices, and fails loudly without them).
suite:
	$(CARGO) test --profile ci
