# syntax=docker/dockerfile:1
# One image with the three binaries: blockproxy (proxy server), blockproxy-mount (sidecar) and
# blockproxy-operator. The chart runs the operator from it (command: blockproxy-operator) and the
# operator runs the proxies from it (command: blockproxy serve ...).
#
#   docker build -t REGISTRY/blockproxy:TAG .
#   docker push REGISTRY/blockproxy:TAG
#   helm install blockproxy charts/blockproxy -n blockproxy-system --create-namespace \
#     --set image.repository=REGISTRY/blockproxy --set image.tag=TAG

# --- build: static musl binaries, built with the same cargo commands the tests use -----------
FROM rust:1.92-bookworm AS build
ARG TARGET=x86_64-unknown-linux-musl
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools cmake clang \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "${TARGET}"
WORKDIR /src
COPY . .
# Same packages as `cargo build -p blockproxy -p blockproxy-operator` in the tests; --locked so
# the image uses exactly the committed Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target "${TARGET}" -p blockproxy -p blockproxy-operator \
 && mkdir -p /out \
 && for b in blockproxy blockproxy-mount blockproxy-csi blockproxy-operator; do \
      cp "target/${TARGET}/release/${b}" /out/; \
    done

# --- run: no shell, no package manager, non-root --------------------------------------------
FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.source="https://github.com/blockproxy/blockproxy" \
      org.opencontainers.image.description="blockproxy: caching block proxies on local NVMe in front of an object store" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["blockproxy-operator"]
