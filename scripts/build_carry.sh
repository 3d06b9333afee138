#!/usr/bin/env bash
# Build the wheels a GPU run needs into .carry/ (git-ignored): our own pure-Python
# distributions, since the device machine has no network and no hatchling.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .carry && rm -f .carry/*.whl
python3 -m pip wheel -q --no-deps -w .carry ./core ./plugins/*/
ls -la .carry
