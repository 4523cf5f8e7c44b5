#!/usr/bin/env bash
# What a user gets from `pip install streamfuse`: build the wheel, install it (not editable)
# into a fresh venv with no torch, and run the demo and the backend list from outside the
# repository. CI runs this (.ci/run); so can you: scripts/check-wheel.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/streamfuse-wheel-XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "check-wheel: building the wheel ..."
# From a copy of the tree (tracked and not-ignored files): setuptools builds in the source
# folder, and CI runs this beside `make test`'s editable install of the same tree.
mkdir "$work/src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard \
    | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$work/src"
python3 -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/streamfuse-*.whl)
echo "check-wheel: installing $(basename "$wheel") into a fresh venv ..."
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel"
if "$work/venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "check-wheel: FAIL: installing the wheel pulled torch" >&2
    exit 1
fi
echo "check-wheel: no torch; venv $(du -sh "$work/venv" | cut -f1)"
cd "$work"  # outside the repository: only what the wheel ships
"$work/venv/bin/streamfuse" backends
"$work/venv/bin/streamfuse" config defaults > "$work/defaults.yaml"
"$work/venv/bin/streamfuse" systemd-unit > "$work/streamfuse.service"
if err=$("$work/venv/bin/streamfuse" train 2>&1); then
    echo "check-wheel: FAIL: streamfuse train ran without torch" >&2
    exit 1
fi
[ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] && [[ $err == "error: "*torch* ]] || {
    echo "check-wheel: FAIL: streamfuse train without torch said: $err" >&2
    exit 1
}
echo "check-wheel: without torch, streamfuse train says: $err"
"$work/venv/bin/streamfuse" demo --digits 4
echo "check-wheel: ok"
