# keymeter — make help lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin/keymeter
export KEYMETER_CACHE ?= $(HOME)/.cache/keymeter
# The embedded ClickHouse engine (libchdb.so) is fetched here by `make deps`.
export CHDB_LIB_PATH ?= $(KEYMETER_CACHE)/chdb/lib/package/libchdb.so
export KEYMETER_KAFKA_BROKERS ?= 127.0.0.1:19092
TEST_FLAGS ?= -race -timeout 30m

.DEFAULT_GOAL := help

.PHONY: help build run test test-short bench generate lint deps debian-deps chdb kafka-up kafka-down clickhouse-up down check-generated cluster-sql clean test-cluster

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build bin/keymeter
	$(GO) build -o $(BIN) ./cmd/keymeter

run: build chdb ## the whole pipeline on embedded defaults, with demo traffic (keymeter dev)
	./$(BIN) dev --data-dir data $(RUN_FLAGS)

deps: debian-deps chdb ## install and fetch what tests need: Debian packages, Go modules, the chDB library, the Kafka broker
	$(GO) mod download
	deploy/kafka/kafka.sh fetch

debian-deps: ## install the Debian packages the tests need when any is missing (apt-get as root or via sudo)
	@scripts/debian-deps.sh test

chdb: ## fetch libchdb.so (npm package @chdb/lib-linux-x64-gnu) into the cache when missing
	@scripts/chdb-lib.sh >/dev/null

kafka-up: ## start the local Kafka broker (KRaft, 127.0.0.1:19092)
	deploy/kafka/kafka.sh start

kafka-down: ## stop the local Kafka broker
	deploy/kafka/kafka.sh stop

clickhouse-up: ## start Debian's clickhouse-server on 127.0.0.1:19000 (wire-protocol tests)
	scripts/clickhouse-server.sh start

# test starts the servers it needs and stops them at the end, pass or fail;
# KEEP_SERVERS=1 leaves them running (make down stops them).
test: deps check-generated ## everything a fresh machine needs, then all tests under -race against real NATS, Kafka, chDB and clickhouse-server
	@scripts/compose-check.sh
	$(GO) vet ./...
	@status=0; \
	KAFKA_FRESH=1 deploy/kafka/kafka.sh start && scripts/clickhouse-server.sh start && \
	$(GO) test $(TEST_FLAGS) ./... || status=$$?; \
	if [ $$status -eq 0 ]; then $(GO) test -count=1 -timeout 10m -run '^TestEvaluationGate$$' ./internal/evaluate/ || status=$$?; fi; \
	if [ $$status -eq 0 ]; then scripts/schemathesis.sh || status=$$?; fi; \
	if [ -z "$(KEEP_SERVERS)" ]; then $(MAKE) --no-print-directory down; fi; \
	exit $$status

# The longer cluster runs: 3 Debian nats-server and 3 KRaft brokers on the
# shipped configs (deploy/nats, deploy/kafka/production), 1M requests each,
# aggregators, a bus node and a verifier killed during the run. The short
# versions (TestChaosNATSCluster, TestChaosKafkaCluster) run in make test.
CHAOS_EVENTS ?= 1000000
test-cluster: build chdb ## the cluster fault runs: keymeter bench chaos on NATS and Kafka (CHAOS_EVENTS=1000000 each); fails on any lost or doubled event
	deploy/kafka/kafka.sh fetch
	./$(BIN) bench chaos --bus nats --events $(CHAOS_EVENTS) --aggregators 3 --kills 5 --log-level error
	./$(BIN) bench chaos --bus kafka --events $(CHAOS_EVENTS) --aggregators 3 --kills 5 --log-level error

down: ## stop the servers make test started (Kafka broker, clickhouse-server)
	-@deploy/kafka/kafka.sh stop
	-@scripts/clickhouse-server.sh stop

check-generated: ## fail when the committed generated code differs from schemas/
	@$(MAKE) --no-print-directory generate >/dev/null
	@git diff --quiet -- internal/event/keymeterv1 2>/dev/null || { echo "generated code differs from schemas/: run make generate and commit" >&2; git diff --stat -- internal/event/keymeterv1 >&2; exit 1; }

test-short: ## unit tests only (no servers)
	$(GO) test -short ./...

bench: build chdb ## codec and hot-path benchmarks, then the bus system benchmark
	$(GO) test -run '^$$' -bench . -benchmem ./internal/...
	./$(BIN) bench bus --bus nats --events 2000000 --batch 1000

generate: ## regenerate Go code from schemas/ (protoc from Debian, protoc-gen-go from the Go proxy)
	GOBIN=$(CURDIR)/.bin $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	protoc --plugin=protoc-gen-go=.bin/protoc-gen-go -I schemas --go_out=. \
		--go_opt=module=github.com/keymeter/keymeter schemas/keymeter/v1/keymeter.proto

cluster-sql: ## regenerate deploy/clickhouse/cluster.sql (the cluster schema) from the store's migrations
	$(GO) run ./cmd/keymeter migrate --print --cluster '{cluster}' > deploy/clickhouse/cluster.sql.tmp
	mv deploy/clickhouse/cluster.sql.tmp deploy/clickhouse/cluster.sql

lint: ## gofmt and go vet
	@test -z "$$(gofmt -l cmd internal)" || { gofmt -l cmd internal; echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

clean: ## remove build output (not the cache, not data/)
	rm -rf bin .bin
