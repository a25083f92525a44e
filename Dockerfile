# haul in a container: one compiled binary on an empty base (linux/amd64).
#
#   docker build --build-arg HAUL_COMMIT=$(git rev-parse --short=12 HEAD) -t haul .
#   docker run --rm -v ollama:/models haul pull llama3.2
#
# The glibc build: Bun's musl build also links a musl libstdc++, which Debian lacks.
# The final stage's COPY lines must list what scripts/rootfs.sh assembles (the loader
# and libraries `ldd dist/haul` prints, and the CA bundle); tests/cli/container_test.ts
# checks that they agree and runs the result in a chroot.

FROM node:22-bookworm-slim AS build
RUN apt-get update \
  && apt-get install -y --no-install-recommends ca-certificates \
  && rm -rf /var/lib/apt/lists/* \
  && npm i -g bun@1
WORKDIR /src
COPY deno.json main.ts ./
COPY cli/ cli/
COPY lib/ lib/
COPY scripts/compile.sh scripts/
ARG HAUL_COMMIT=unknown
RUN HAUL_COMMIT="$HAUL_COMMIT" bash scripts/compile.sh --outfile dist/haul \
  && ./dist/haul --version

FROM scratch
COPY --from=build /src/dist/haul /haul
COPY --from=build /lib64/ld-linux-x86-64.so.2 /lib64/ld-linux-x86-64.so.2
COPY --from=build /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libc.so.6
COPY --from=build /lib/x86_64-linux-gnu/libdl.so.2 /lib/x86_64-linux-gnu/libdl.so.2
COPY --from=build /lib/x86_64-linux-gnu/libm.so.6 /lib/x86_64-linux-gnu/libm.so.6
COPY --from=build /lib/x86_64-linux-gnu/libpthread.so.0 /lib/x86_64-linux-gnu/libpthread.so.0
# Trusted by the binary (built with --use-system-ca): add a private CA by appending to it.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# The store lives in a volume; HOME holds .docker/config.json (haul login) and .ollama keys.
ENV OLLAMA_MODELS=/models HOME=/root
VOLUME ["/models"]
ENTRYPOINT ["/haul"]
CMD ["--help"]
