# Build: docker build -t idv-token-operator .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Everything Cargo.toml names (tests and examples are declared targets).
COPY . .
RUN cargo build --release --locked --bin idv-token-operator

# No shell, no package manager; runs as the distroless nonroot user (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/idv-token-operator /usr/local/bin/idv-token-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/idv-token-operator"]
CMD ["run"]
