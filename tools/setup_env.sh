#!/usr/bin/env bash
# Moved to scripts/setup_env.sh (environment and CI scripts live in scripts/): this forwards to it.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../scripts/setup_env.sh" "$@"
