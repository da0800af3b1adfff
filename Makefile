# glimpse-agent build, test and demo targets (GNU make).
#
#   make            build bin/glimpse-agent
#   make test       install test deps, build Consul, go test -race ./...
#   make run        local demo: Consul dev agent + demo topology + glimpse-agent
#   make bench      benchmark against Consul's DNS and a ceiling; writes
#                   bench/RESULTS.md and its charts (BENCHFLAGS='-help' lists flags)
#
# Overrides: CONSUL_BIN=/path/to/consul (skip building Consul), PKG=./dns/...,
# TESTFLAGS='-run TestX -v', TEST_TIMEOUT=18m, GO=go.

SHELL := /bin/bash
GO ?= go
PKG ?= ./...
TESTFLAGS ?=
TEST_TIMEOUT ?= 18m

AGENT_BIN := bin/glimpse-agent
CLI_BIN := bin/glimpse
# What -version prints: the nearest tag (or "dev") and the commit.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/rugby110/glimpse/internal/version.Version=$(VERSION) -X github.com/rugby110/glimpse/internal/version.Commit=$(COMMIT)
CONSUL_LOCAL := bin/consul
# The Consul binary tests and the demo use: $(CONSUL_BIN) when set, else ours.
CONSUL := $(if $(strip $(CONSUL_BIN)),$(CONSUL_BIN),$(CURDIR)/$(CONSUL_LOCAL))

.DEFAULT_GOAL := build
.PHONY: build consul deps test vet fmt run bench soak fuzz clean distclean package
BENCHFLAGS ?=

build:
	@mkdir -p bin
	$(GO) build -ldflags "$(LDFLAGS)" -o $(AGENT_BIN) ./cmd/glimpse-agent
	$(GO) build -ldflags "$(LDFLAGS)" -o $(CLI_BIN) ./cmd/glimpse

# A .deb in dist/: the binaries, the systemd unit, a default environment
# file, the resolver snippets and a postinst that creates the glimpse user.
package: build
	bash scripts/package.sh

ifeq ($(strip $(CONSUL_BIN)),)
consul: $(CONSUL_LOCAL)
else
consul:
	@echo "consul: using CONSUL_BIN=$(CONSUL_BIN), not building $(CONSUL_LOCAL)"
endif

# Consul v1.14.0, pinned by the separate module in tools/consul. Slow to build:
# only rebuilt when tools/consul/go.mod or go.sum is newer than the binary.
$(CONSUL_LOCAL): tools/consul/go.mod tools/consul/go.sum
	@mkdir -p bin
	@echo "consul: building Consul v1.14.0 from tools/consul into $(CONSUL_LOCAL): about 5 minutes the first time on 2 CPUs (CONSUL_BIN=/path/to/consul uses a binary you have instead)"
	@cd tools/consul && bash -o pipefail -c '$(GO) build -v -o ../../$(CONSUL_LOCAL) github.com/hashicorp/consul 2>&1 | \
		awk '"'"'/^(#|go: |[^ ]+\.go:)/ { print; next } { if (++n % 100 == 0) printf "consul: %d packages compiled\n", n }'"'"''
	@touch $@

deps:
	@bash scripts/install-deps.sh

test: deps consul
	CONSUL_BIN="$(CONSUL)" $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(TESTFLAGS) $(PKG)

vet:
	$(GO) vet $(PKG)

fmt:
	$(GO) fmt $(PKG)

run: deps consul build
	CONSUL_BIN="$(CONSUL)" GLIMPSE_AGENT_BIN="$(CURDIR)/$(AGENT_BIN)" bash scripts/demo.sh

bench: consul build
	@bash scripts/install-deps.sh bench
	$(GO) build -o bin/glimpse-bench ./bench
	bin/glimpse-bench -consul "$(CONSUL)" -agent $(AGENT_BIN) $(BENCHFLAGS)

# Ten minutes of mixed load (DNS, websockets, long-polls, Consul churn) with
# glimpse-agent's goroutines, fds, heap and RSS sampled; not part of make test.
# A history of 2,048 changes fills in under two minutes at the soak's 20
# changes a second, so the figures after that show any other growth; the
# default of 16,384 would still be filling at the end.
soak: consul build
	@bash scripts/install-deps.sh bench
	$(GO) build -o bin/glimpse-bench ./bench
	bin/glimpse-bench -consul "$(CONSUL)" -agent $(AGENT_BIN) -sections soak -products 200 -agent.args "-http.history 2048" $(SOAKFLAGS)

# Each fuzz target for FUZZTIME (default 5m); crashers land in the package's
# testdata/fuzz, where make test runs them as regression cases.
FUZZTIME ?= 5m
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzServeRaw$$' -fuzztime $(FUZZTIME) ./dns
	$(GO) test -run '^$$' -fuzz '^FuzzParseName$$' -fuzztime $(FUZZTIME) ./dns
	$(GO) test -run '^$$' -fuzz '^FuzzParseAddress$$' -fuzztime $(FUZZTIME) ./http
	$(GO) test -run '^$$' -fuzz '^FuzzLookup$$' -fuzztime $(FUZZTIME) ./http
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./provider

# Removes the agent binary and cached test results; keeps bin/consul, which is
# slow to rebuild (use distclean for that).
clean:
	rm -f $(AGENT_BIN) bin/glimpse-bench
	$(GO) clean -testcache

distclean: clean
	rm -rf bin
