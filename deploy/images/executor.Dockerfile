# The executor image: one static (musl) binary and its precompiled guest snapshot, no
# shell, no package manager, nothing else. Built by ./scripts/images from its context
# directory (the binary and snapshot/ are made there first); `FROM scratch` needs no
# registry.
FROM scratch
COPY enclave-executor /enclave-executor
# Loaded at start, so a new container serves in milliseconds instead of compiling the
# guest for seconds. Owned by root and read-only: the executor (uid 65532) cannot
# replace what it will run.
COPY snapshot/ /snapshot/
ENV ENCLAVE_SNAPSHOT_DIR=/snapshot \
    ENCLAVE_LISTEN=0.0.0.0:7701
USER 65532:65532
EXPOSE 7701
HEALTHCHECK --interval=2s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/enclave-executor", "healthcheck"]
ENTRYPOINT ["/enclave-executor"]
