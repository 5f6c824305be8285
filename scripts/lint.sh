#!/usr/bin/env bash
# ruff lint (F, E, W, I) and format check of the whole tree, with the settings in pyproject.toml. The ruff version
# is pinned (the `lint` extra) so that a new ruff release cannot turn a formatted tree into a failing one.
# Settings:
#   VENV=.venv (default)   the environment made by scripts/setup.sh; ruff is installed into it if missing
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
RUFF_VERSION=$(sed -nE 's/^lint = \["ruff==([0-9.]+)"\]$/\1/p' pyproject.toml)
if [ "$("$VENV/bin/ruff" --version 2>/dev/null)" != "ruff $RUFF_VERSION" ]; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "ruff==$RUFF_VERSION"
fi
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
