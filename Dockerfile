# syntax=docker/dockerfile:1
# regcap's one image: both static binaries, worker (the entrypoint) and
# requester, on distroless/static: CA certificates and /etc/passwd with a
# non-root user, no shell, no libc (the binaries are built with
# CGO_ENABLED=0 and -trimpath, in this stage only: `make build` compiles
# as `go run` and `go test` do, to share their build cache).
#
# VERSION is what `worker --version` reports. `make image` passes
# $(VERSION) (git describe) and tags $(IMAGE):$(VERSION); Compose passes
# ${VERSION:-dev} and tags regcap:${VERSION:-dev}. Built without it: dev.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
# The cache mounts keep modules and compiled packages across image
# builds, so a rebuild after an edit compiles only what changed.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/ ./cmd/worker ./cmd/requester

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/worker /out/requester /usr/local/bin/
USER nonroot:nonroot
# 9090: /metrics, /healthz, /readyz
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/worker"]
