#!/usr/bin/env bash
# Moved to scripts/run_tests.sh (environment and CI scripts live in scripts/): this forwards to it.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../scripts/run_tests.sh" "$@"
