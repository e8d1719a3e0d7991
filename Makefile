GO ?= go
# staticcheck, pinned; `make test` installs it into the Go bin folder.
STATICCHECK_VERSION ?= v0.8.2
STATICCHECK := $(shell $(GO) env GOPATH)/bin/staticcheck
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# -X only touches the link step: the packages compile as `go run` and
# `go test` compile them, so all of them share one build cache.
LDFLAGS := -X main.version=$(VERSION)
# The image `make image` builds; push it where your cluster pulls from
# (docs/deploy.md): no image is published yet.
IMAGE ?= regcap

.PHONY: all build check test test-deps test-ha vet fuzz bench clean demo image

all: build

# bin/worker, bin/requester, bin/demo. No -trimpath or CGO_ENABLED=0
# here (the Dockerfile sets them for the image's static binaries): either
# would change every package's cache key, and the first `make build`
# after `make demo` or `go test` would compile everything again.
build:
	@echo 'go build ./cmd/... into bin/ (the first build takes minutes; docs/deploy.md)' >&2
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/ ./cmd/...

# The container image of docker-compose.yaml and the Helm chart, with
# both binaries; e.g. make image IMAGE=registry.example.com/regcap VERSION=0.1.0
image:
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE):$(VERSION) .

# Installs what the tests need (redis-server, docker-registry), then vets
# (gofmt, go vet, staticcheck) and runs every test with the race detector.
test: test-deps vet
	$(GO) test -race -count=1 -timeout 30m ./...
	# Gatekeeper's own external data client against the HTTP front: a
	# module of its own (test/gatekeeper), so that its dependencies stay
	# out of the worker's go.mod.
	cd test/gatekeeper && $(GO) vet ./... && $(GO) test -race -count=1 -timeout 10m ./...
	# A Kubewarden policy written with policy-sdk-go, built for wasip1 in
	# the test and run in client/wasihost and through requester run.
	cd test/kubewarden && $(GO) vet ./... && $(GO) test -race -count=1 -timeout 10m ./...
	# The Helm chart, rendered and linted with Helm's Go packages and
	# decoded into k8s.io/api types: a module of its own for the same reason.
	cd deploy/helm && $(GO) vet ./... && $(GO) test -count=1 -timeout 10m ./...

# The quick tier: gofmt, vet, staticcheck and every test but the long
# ones (node kills, binaries built and run, load), which honour -short.
check: test-deps vet
	$(GO) test -short -count=1 -timeout 15m ./...

test-deps:
	./scripts/install-test-deps.sh

vet:
	@# Not `tee /dev/stderr`: reopening it truncates a log file stderr goes to.
	@unformatted="$$(gofmt -l .)"; test -z "$$unformatted" || { echo "$$unformatted" >&2; echo "gofmt needed on the files above" >&2; exit 1; }
	$(GO) vet ./...
	@$(STATICCHECK) -version 2>/dev/null | grep -q '$(STATICCHECK_VERSION:v%=%)' || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(STATICCHECK) ./...

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseReference -fuzztime 60s ./internal/handlers/
	$(GO) test -run '^$$' -fuzz FuzzParsePlatform -fuzztime 60s ./internal/handlers/
	$(GO) test -run '^$$' -fuzz FuzzOpenValue -fuzztime 60s ./internal/rediscache/
	$(GO) test -run '^$$' -fuzz FuzzOpenNotice -fuzztime 60s ./internal/rediscache/

# The node-kill tests alone (NATS cluster, Redis Cluster, Sentinel), with
# their figures; make test runs them too.
test-ha: test-deps
	$(GO) test -race -count=1 -v ./test/ha/

bench: test-deps
	$(GO) test -run '^$$' -bench . -benchtime 2s ./internal/queue/ ./internal/resolve/ ./test/e2e/

# Runs regcap end to end offline: a local registry with a sample image, a
# worker, and the three capabilities asked twice each (a miss, then a hit).
# It builds bin/ first, so the binaries exist once the demo has run.
demo: build
	./bin/demo

clean:
	rm -rf bin/
