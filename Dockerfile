# syntax=docker/dockerfile:1
# keymeter: one binary, every role (`docker run IMAGE verifier --help`).
# Containers use the ClickHouse server (--store clickhouse); the embedded
# chDB engine (libchdb) is not in this image.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
# Only what the build reads (the repository has no .dockerignore; bin/ and
# data directories stay out of the image this way).
COPY cmd ./cmd
COPY internal ./internal
COPY schemas ./schemas
# CGO_ENABLED=0 builds; the binary still links libc dynamically (it loads
# libchdb with dlopen when asked for --store chdb), hence a glibc base below.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/keymeter ./cmd/keymeter

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 keymeter \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/keymeter --shell /usr/sbin/nologin keymeter \
 && mkdir -p /var/lib/keymeter /etc/keymeter && chown keymeter:keymeter /var/lib/keymeter
COPY --from=build /out/keymeter /usr/local/bin/keymeter
# The starter rules; Kubernetes mounts its rules ConfigMap over this path.
COPY rules /etc/keymeter/rules
USER 10001:10001
WORKDIR /var/lib/keymeter
ENV KEYMETER_DATA_DIR=/var/lib/keymeter
# verifier proxy, api, admin (/metrics, /healthz, /readyz)
EXPOSE 8080 8081 9464
ENTRYPOINT ["/usr/local/bin/keymeter"]
CMD ["--help"]
