#!/usr/bin/env bash
# Writes the Python gRPC stubs for proto/proto/enclave/v1/*.proto to OUT_DIR (default
# build/gen) to read them. The client does not need this: it generates them into a
# temporary directory at import time (enclave_client/stubs.py). Never commit the output.
set -euo pipefail
cd "$(dirname "$0")"
python3 -c 'import sys; from enclave_client.stubs import generate; print(generate(sys.argv[1]))' "${1:-build/gen}"
