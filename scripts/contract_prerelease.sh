#!/usr/bin/env bash
# The "contract" tests (pytest -m contract: generate() with and without the cache, pipelines, remote code) against
# the newest pre-release of transformers, when the package index has one newer than the newest release. A rename
# like 5.24's `past_key_values` -> `cache` shows up here before users install it. CI calls this and reports a
# failure as a WARNING line, not as a red run: a pre-release is outside the declared range.
# Exit status: 0 when the tests pass or there is no newer pre-release, 1 when they fail.
# Settings:
#   VENV=.venv-pre (default)   the environment made for it (scripts/setup.sh, then the pre-release on top)
#   PIP=.venv/bin/pip          the pip that asks the index (setup.sh's environment)
#   PRERELEASE=5.26.0rc0       test this version instead of looking one up (e.g. to try the job itself)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-pre}

newest() {  # newest [--pre]: the newest transformers version on the configured index
    "${PIP:-.venv/bin/pip}" index versions "$@" transformers 2>/dev/null | sed -nE '1s/^transformers \((.*)\)$/\1/p'
}
release=$(newest)
prerelease=${PRERELEASE:-$(newest --pre)}
if [ -z "$prerelease" ] || [ -z "$release" ]; then
    echo "contract (pre-release): the index did not list transformers versions; nothing tested"
    exit 0
fi
if [ "$prerelease" = "$release" ]; then
    echo "contract (pre-release): no transformers pre-release newer than $release; nothing to test"
    exit 0
fi
echo "contract (pre-release): transformers $prerelease (newest release: $release)"
VENV=$VENV bash scripts/setup.sh
"$VENV/bin/pip" install --quiet --disable-pip-version-check --pre -c .ci/torch-cpu.txt "transformers==$prerelease"
"$VENV/bin/python" -c "import transformers; print('contract (pre-release): testing transformers', transformers.__version__)"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$VENV/bin/python" -m pytest -m contract -q -p no:cacheprovider
