#!/bin/sh
# Container entrypoint: give prefork children a fresh directory for their
# Prometheus samples (prometheus-client multiprocess mode), then run the command.
set -eu
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    rm -rf "${PROMETHEUS_MULTIPROC_DIR}"
    mkdir -p "${PROMETHEUS_MULTIPROC_DIR}"
fi
exec "$@"
