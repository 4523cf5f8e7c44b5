#!/usr/bin/env bash
# Lockstep replay on an emulated arm64 box must print the same bytes as on this one.
#
# Builds a throwaway arm64 Python (Debian's, run by qemu-aarch64) with the aarch64 wheels of
# the packages this venv has, at the same versions, then runs `streamfuse replay --lockstep`
# on the test session under several arm64 CPU models and compares with the native output.
# Needs: Debian/Ubuntu x86-64, root (dpkg multiarch), network to the Debian mirror and PyPI,
# `make venv` done. About 3 minutes; nothing outside $WORK (default /tmp/sf-arm64) is kept.
#
#   scripts/lockstep-on-arm64.sh [SESSION.mcap]
set -euo pipefail
cd "$(dirname "$0")/.."
SESSION=${1:-tests/data/session.mcap}
WORK=${WORK:-/tmp/sf-arm64}
PY=$PWD/.venv/bin/python
mkdir -p "$WORK"/{debs,root,site,meta}

command -v qemu-aarch64 >/dev/null || apt-get install -y -q qemu-user
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    apt-get update -q
fi
if [ ! -x "$WORK/root/usr/bin/python3.11" ]; then
    (cd "$WORK/debs" && apt-get download -q \
        python3.11-minimal:arm64 libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64 \
        libc6:arm64 libexpat1:arm64 zlib1g:arm64 libffi8:arm64 libssl3:arm64 \
        libbz2-1.0:arm64 liblzma5:arm64 libsqlite3-0:arm64 libuuid1:arm64 libncursesw6:arm64 \
        libtinfo6:arm64 libreadline8:arm64 libgcc-s1:arm64 libstdc++6:arm64 libcrypt1:arm64)
    for deb in "$WORK"/debs/*.deb; do dpkg -x "$deb" "$WORK/root"; done
fi

# the same versions as this venv, built for aarch64
pins=$($PY - <<'PYEOF'
from importlib.metadata import version
names = ["numpy", "onnx", "opencv-python-headless", "msgspec", "mcap", "pyzmq", "msgpack",
         "click", "rich", "pyyaml", "filelock", "prometheus-client", "lz4", "zstandard",
         "protobuf", "ml_dtypes", "typing_extensions"]
print(" ".join(f"{n}=={version(n)}" for n in names))
PYEOF
)
if [ ! -d "$WORK/site/numpy" ]; then
    # shellcheck disable=SC2086
    $PY -m pip download -q --only-binary=:all: --python-version 3.11 --implementation cp \
        --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
        --platform manylinux_2_28_aarch64 -d "$WORK/wheels" $pins
    for whl in "$WORK"/wheels/*.whl; do (cd "$WORK/site" && $PY -m zipfile -e "$whl" .); done
fi
# streamfuse itself: the editable install's finder and entry points (pure Python)
site=$($PY -c "import site; print(site.getsitepackages()[0])")
cp -r "$site"/__editable__*streamfuse* "$site"/streamfuse-*.dist-info "$WORK/meta/"
cat > "$WORK/run.py" <<PYEOF
import site, sys
site.addsitedir("$WORK/site")
site.addsitedir("$WORK/meta")
from streamfuse.cli import main
sys.argv = ["streamfuse", *sys.argv[1:]]
main()
PYEOF

native=$($PY -m streamfuse replay "$SESSION" --lockstep --json 2>/dev/null | sha256sum | cut -c1-16)
echo "x86-64 ($(uname -m), native):   $native"
status=0
for cpu in cortex-a72 neoverse-n1 max; do
    got=$(qemu-aarch64 -cpu "$cpu" -L "$WORK/root" "$WORK/root/usr/bin/python3.11" "$WORK/run.py" \
        replay "$SESSION" --lockstep --json 2>/dev/null | sha256sum | cut -c1-16)
    same=$([ "$got" = "$native" ] && echo same || echo DIFFERENT)
    echo "arm64 ($cpu, emulated): $got  $same"
    [ "$got" = "$native" ] || status=1
done
exit $status
