# The two commands a newcomer needs:
#   make run    start the gateway on http://localhost:4000 (chat + presence demo)
#   make test   install what is missing and run every test
.PHONY: run test build lint

run: node_modules/phoenix/package.json
	cargo run --release --bin phx-gateway

test:
	scripts/test.sh

build:
	cargo build --release

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

# The demo page loads the official phoenix client from node_modules (never committed).
node_modules/phoenix/package.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@
