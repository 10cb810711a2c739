#!/usr/bin/env bash
# Moved to scripts/gpu_check.sh (environment and CI scripts live in scripts/): this forwards to it.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../scripts/gpu_check.sh" "$@"
