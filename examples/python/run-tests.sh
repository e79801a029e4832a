#!/usr/bin/env bash
# Installs the Python example's pinned requirements and runs its tests (the protocol test
# vectors, a live enclave-broker and enclave-executor, grpcurl). Extra arguments go to pytest.
#
# The binaries come from $CARGO_TARGET_DIR (default <repo>/target)/debug; when either is
# missing they are built with `cargo build -p enclave-broker -p enclave-executor`.
# Exits non-zero on any failure, including "no tests collected".
set -euo pipefail
cd "$(dirname "$0")"
repo=$(cd ../.. && pwd)
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

python=python3
if ! out=$("$python" -m pip install -q -r requirements.txt 2>&1); then
  if grep -q externally-managed <<<"$out"; then
    # PEP 668 system Python (e.g. Debian): use a virtual environment instead.
    echo "run-tests.sh: system Python is externally managed; using build/venv" >&2
    "$python" -m venv build/venv
    python=build/venv/bin/python
    "$python" -m pip install -q -r requirements.txt
  else
    echo "$out" >&2
    exit 1
  fi
else
  if [ -n "$out" ]; then echo "$out" >&2; fi
fi

target=${CARGO_TARGET_DIR:-$repo/target}
case $target in /*) ;; *) target=$repo/$target ;; esac
if [ ! -x "$target/debug/enclave-broker" ] || [ ! -x "$target/debug/enclave-executor" ]; then
  (cd "$repo" && cargo build -p enclave-broker -p enclave-executor)
fi

rc=0
"$python" -m pytest "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run-tests.sh: pytest collected no tests" >&2
  rc=1
fi
exit "$rc"
