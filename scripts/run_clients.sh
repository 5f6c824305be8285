#!/usr/bin/env bash
# Opt-in "clients" job: install the `clients` extra (lm-evaluation-harness) into an environment made by
# scripts/setup.sh, then run the tests marked `clients` (tests/test_clients.py), which fail rather than skip
# when lm_eval is missing. The environment's versions are what is under test, so the install must not move
# any of them: every installed package is pinned to its current version, and the check at the end proves it.
# Settings (as for scripts/setup.sh):
#   VENV=.venv (default)              the existing environment
#   CONSTRAINTS=.ci/oldest.txt        optional extra pins, the same file setup.sh was given
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PIP=("$VENV/bin/pip" --disable-pip-version-check)
[ -x "$VENV/bin/python" ] || { echo "no environment at $VENV: run scripts/setup.sh first" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# slam_hf itself is an editable install (no version to pin); everything else is pinned exactly.
"${PIP[@]}" freeze --exclude-editable | grep -v '^#' > "$work/before.txt"
SECONDS=0
"${PIP[@]}" install --quiet -c .ci/torch-cpu.txt ${CONSTRAINTS:+-c "$CONSTRAINTS"} -c "$work/before.txt" -e ".[clients]"
"${PIP[@]}" freeze --exclude-editable | grep -v '^#' > "$work/after.txt"
changed=$(comm -23 <(sort "$work/before.txt") <(sort "$work/after.txt"))
if [ -n "$changed" ]; then
    echo "installing the clients extra changed or removed these packages:" >&2
    echo "$changed" >&2
    exit 1
fi

echo "clients extra installed in ${SECONDS}s"
"$VENV/bin/python" -c "import importlib.metadata as m; print(*(f'{p} {m.version(p)}' for p in ('lm_eval', 'transformers', 'torch', 'datasets')), sep=' | ')"
SLAM_REQUIRE_CLIENTS=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$VENV/bin/python" -m pytest -m clients -q "$@"
