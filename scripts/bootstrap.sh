#!/usr/bin/env bash
# Sets up .venv with the pinned stack, in the order it has to go in:
#   system tools (Java 17, cmake, g++) → Python packages from the lock → Horovod compiled against
#   the installed TensorFlow (Gloo always; NCCL where a CUDA toolkit and a GPU are present) → this package.
# A stamp keyed on the lock file's hash makes the second run a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
LOCK=requirements/lock-cpu.txt
HOROVOD_VERSION=0.28.1
STAMP="$VENV/.installed-$(cat "$LOCK" pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"

if [ -f "$STAMP" ]; then
  exit 0
fi

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }
need_apt=()
java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }
if ! command -v java >/dev/null || [ "$(java_major)" != "17" ]; then need_apt+=(openjdk-17-jre-headless); fi
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++)
command -v make >/dev/null || need_apt+=(make)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    say "installing ${need_apt[*]} with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    echo "Missing system packages: ${need_apt[*]}. Install them (Debian/Ubuntu: sudo apt-get install ${need_apt[*]}) and run this again." >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
"$PIP" install -q --disable-pip-version-check "pip<25" "setuptools<70" wheel

GPU=0
if command -v nvcc >/dev/null && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then GPU=1; fi

say "installing the pinned stack from $LOCK (GPU: $GPU)"
if [ "$GPU" = 1 ]; then
  "$PIP" install -q -c "$LOCK" "tensorflow[and-cuda]==2.15.1" -r requirements/base.txt
else
  "$PIP" install -q -r "$LOCK"
fi

if ! "$VENV/bin/python" -c "import horovod.tensorflow" 2>/dev/null; then
  say "compiling horovod $HOROVOD_VERSION against the installed TensorFlow (about 6 minutes on 2 cores)"
  export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
         HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=GLOO
  if [ "$GPU" = 1 ]; then export HOROVOD_GPU_OPERATIONS=NCCL; fi
  # The built wheel stays in pip's cache, keyed on the same sdist; TensorFlow is pinned, so reusing it is safe.
  MAKEFLAGS="-j$(nproc)" "$PIP" install -q --no-build-isolation "horovod==$HOROVOD_VERSION"
fi

"$PIP" install -q --no-deps -e .
"$VENV/bin/horovodrun" --check-build | grep -E "TensorFlow|Gloo" | tr -s ' ' | sed 's/^/[bootstrap] horovod: /'
rm -f "$VENV"/.installed-*
touch "$STAMP"
say "ready: $VENV"
