# Sourced by the prepared device scripts: put the four layers of this source tree on the path under their
# `dropbp.*` names (symbolic links in a temporary folder), so that a python3 that already holds torch,
# transformers and peft runs them with no install and no network. Sets PY (the interpreter: $PYTHON or python3).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SHIM=$(mktemp -d)
trap 'rm -rf "$SHIM"' EXIT
mkdir -p "$SHIM/dropbp"
for pair in core:dropbp_core backends:backends recipes:recipes benchmarks:benchmarks; do
  ln -s "$PWD/${pair#*:}" "$SHIM/dropbp/${pair%%:*}"
done
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
