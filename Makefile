# hush — build, run and test entry points. See README.md.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
TOOLS := $(CURDIR)/.tools/bin
TESTENV_ENV := .testenv/env
FUZZTIME ?= 10s
BENCHTIME ?= 1s
HUSH_DATA ?= $(CURDIR)/.hush-data
HUSH_LISTEN ?= 127.0.0.1:8080

# Pinned code generators (make generate).
BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
STATICCHECK_VERSION := v0.8.2

.PHONY: all build run test test-unit bench bench-go fuzz lint generate tools testenv-up testenv-down clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# The all-in-one server (key server + relay + media) on the embedded store.
run: build
	$(BIN)/hush-server --listen $(HUSH_LISTEN) --data $(HUSH_DATA)

# make test: start the real Redis, Cassandra and S3 the integration tests
# need (scripts/testenv/up installs what is missing), then run every test
# with the race detector against them.
test: testenv-up
	set -a; . ./$(TESTENV_ENV); set +a; $(GO) test -race -count=1 -timeout 30m ./...

# Unit tests only: no services; service-backed tests skip loudly (and fail
# under CI=true).
test-unit:
	$(GO) test -race -count=1 ./...

# hush-bench scenarios against a fresh hush-server each, plus the crypto Go
# benchmarks; rewrites the "## hush-bench" section of docs/benchmarks.md.
bench:
	GO=$(GO) scripts/bench

# Every package's Go micro-benchmarks.
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./...

# Runs every Fuzz target of every package for FUZZTIME each.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "== $$pkg $$f"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(TOOLS)/staticcheck ./...

tools:
	GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

# Regenerates protocol/*.pb.go from protocol/*.proto with the pinned tools.
generate: tools
	cd protocol && PATH=$(TOOLS):$$PATH $(TOOLS)/buf generate

testenv-up:
	scripts/testenv/up

testenv-down:
	scripts/testenv/down

clean:
	rm -rf $(BIN)
