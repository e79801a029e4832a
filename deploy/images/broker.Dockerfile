# The broker image: one static (musl) binary, CA certificates for `http:fetch` over
# https, and the directory its identity key lives in. No shell, no package manager.
# Built by ./scripts/images from its context directory; `FROM scratch` needs no registry.
FROM scratch
COPY enclave-broker /enclave-broker
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# For embedded mode (`docker run enclave-broker`, no executors): the executor image's
# precompiled guest snapshot, which fits this binary's sandbox too.
COPY snapshot/ /snapshot/
# Owned by the broker's user, so that a named volume mounted here starts out writable
# by it (Docker copies the mount point's owner into a new volume).
COPY --chown=65532:65532 identity/ /var/lib/enclave/
ENV ENCLAVE_IDENTITY=/var/lib/enclave/broker.key \
    ENCLAVE_SNAPSHOT_DIR=/snapshot \
    ENCLAVE_LISTEN=0.0.0.0:7700 \
    ENCLAVE_HTTP_LISTEN=0.0.0.0:7780 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
EXPOSE 7700 7780
HEALTHCHECK --interval=2s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/enclave-broker", "healthcheck"]
ENTRYPOINT ["/enclave-broker"]
