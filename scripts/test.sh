#!/usr/bin/env bash
# The one test command: sets up what a fresh machine lacks (a .venv with the package and its dev
# tools, the real services), then runs the linters, the type checker, the documentation build
# (mkdocs --strict) and the tests, stopping at the first step that fails. Arguments go to pytest, e.g. `./scripts/test.sh -k kafka -x`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A virtual environment with the package installed editable; reinstalled when pyproject changes.
[[ -x .venv/bin/python ]] || python3 -m venv .venv
stamp=.venv/.iotdata-dev-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ $(cat "$stamp" 2>/dev/null) != "$want" ]]; then
	echo "test: installing iotdata[dev] into .venv"
	.venv/bin/python -m pip install -q --upgrade pip
	.venv/bin/python -m pip install -q -e '.[dev]'
	echo "$want" >"$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"

scripts/services.sh up

step() {
	echo "test: $*"
	"$@"
}
step ruff check .
step ruff format --check .
step mypy
NO_MKDOCS_2_WARNING=1 step mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
step pytest "$@"
