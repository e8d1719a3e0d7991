# syntax=docker/dockerfile:1
# Multi-stage build of regcap's two static binaries. The runtime image is
# distroless/static: CA certificates and /etc/passwd with a non-root user,
# no shell, no libc (the binaries are built with CGO_ENABLED=0).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/ ./cmd/worker ./cmd/requester

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/worker /out/requester /usr/local/bin/
USER nonroot:nonroot
# 9090: /metrics, /healthz, /readyz
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/worker"]
