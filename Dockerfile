# syntax=docker/dockerfile:1
# keymeter: one binary, every role. The embedded chDB store is not in this
# image; containers use the ClickHouse server (--store clickhouse).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/keymeter ./cmd/keymeter

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /var/lib/keymeter keymeter && mkdir -p /var/lib/keymeter && chown keymeter /var/lib/keymeter
COPY --from=build /out/keymeter /usr/local/bin/keymeter
COPY rules /etc/keymeter/rules
USER keymeter
WORKDIR /var/lib/keymeter
ENV KEYMETER_DATA_DIR=/var/lib/keymeter
ENTRYPOINT ["/usr/local/bin/keymeter"]
CMD ["--help"]
