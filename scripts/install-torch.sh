#!/usr/bin/env bash
# Install torch into a venv for the extras that need it ([torch], [train], [dev]) without
# pulling a multi-GB CUDA build onto a box that has no CUDA: there, take PyTorch's CPU build
# from PyTorch's own CPU wheel index; where that index cannot be reached, say so in one line
# and take what the configured indexes offer. Afterwards say which build it is.
#   scripts/install-torch.sh [PYTHON]     (default .venv/bin/python; TORCH_VERSION to change)
set -euo pipefail
py=${1:-.venv/bin/python}
version=${TORCH_VERSION:-2.13.0}
cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
pip=("$py" -m pip install --disable-pip-version-check)

if "$py" -c "import torch" 2>/dev/null; then
    :  # already there: only report which build below
elif command -v nvidia-smi >/dev/null 2>&1; then
    echo "install-torch: a CUDA GPU is here; torch $version from the configured indexes (CUDA build)"
    "${pip[@]}" "torch==$version"
elif "$py" - "$cpu_index" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10).close()
except Exception:
    sys.exit(1)
PY
then
    echo "install-torch: no CUDA here; torch $version (CPU build) from $cpu_index"
    "${pip[@]}" --index-url "$cpu_index" "torch==$version"
else
    echo "install-torch: $cpu_index is unreachable; torch $version from the configured indexes instead"
    "${pip[@]}" "torch==$version"
fi

"$py" - <<'PY'
import shutil, torch
if torch.version.cuda is None:
    print(f"install-torch: torch {torch.__version__}, CPU build")
elif shutil.which("nvidia-smi") is None:
    print(f"install-torch: warning: torch {torch.__version__} is a CUDA {torch.version.cuda} "
          "build on a box without CUDA (several GB); scripts/install-torch.sh explains")
else:
    print(f"install-torch: torch {torch.__version__}, CUDA {torch.version.cuda} build")
PY
