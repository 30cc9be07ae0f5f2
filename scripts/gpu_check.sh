#!/usr/bin/env bash
# The prepared GPU check (docs/speed.md, "The GPU check"): one command, under 8 minutes on one
# H100/H200, on a box that has PyTorch, transformers, peft and accelerate and no network.
#
#   scripts/gpu_check.sh [--wheels DIR] [--site DIR] [--out DIR] [--work DIR] [--realdata DIR] [--budget S]
#                        [--cpu-smoke] [--no-install] [--install-only]
#
# 1. Installs what phinetune[bench] needs beyond what the box already has from a local wheel folder (--wheels,
#    default wheels/ in the repo root; scripts/download_gpu_wheels.sh fills it on a connected machine), then
#    phinetune itself from this working tree (--no-deps --no-index), and checks every requirement is met.
#    --site DIR installs into DIR (pip --target) instead of the running Python's environment.
# 2. Runs `python -m phinetune.bench.gpu_check run`: bench train (QLoRA and bf16 LoRA), bench infer
#    (bf16/fp16/nf4), plan --validate on the GPU, bench train --nproc (DDP vs FSDP2, with 2+ GPUs), each under
#    its own time budget; writes OUT/gpu-check.json and OUT/gpu-check.md (default OUT: gpu-check/ in the repo).
#
# --cpu-smoke: the same steps on tiny shapes on CPU (the test suite runs it); no install unless --wheels is given.
# Exit: 0 every step that ran passed, 1 some failed (the report says which, with log tails), 2 bad input,
# a failed install or no GPU.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
WHEELS="" SITE="" CHECK_DIR="$REPO/gpu-check" WORK="" REALDATA="" BUDGET="" SMOKE=0 INSTALL=auto ONLY_INSTALL=0

die() { echo "error: $*" >&2; exit 2; }
need_value() { if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (scripts/gpu_check.sh --help)"; fi; }

while [ "$#" -gt 0 ]; do
  case "$1" in
    --wheels) need_value "$@"; WHEELS=$2; INSTALL=yes; shift 2 ;;
    --site) need_value "$@"; SITE=$2; shift 2 ;;
    --out) need_value "$@"; CHECK_DIR=$2; shift 2 ;;
    --work) need_value "$@"; WORK=$2; shift 2 ;;
    --realdata) need_value "$@"; REALDATA=$2; shift 2 ;;
    --budget) need_value "$@"; BUDGET=$2; shift 2 ;;
    --cpu-smoke) SMOKE=1; shift ;;
    --no-install) INSTALL=no; shift ;;
    --install-only) ONLY_INSTALL=1; shift ;;
    -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1'; see scripts/gpu_check.sh --help" ;;
  esac
done
case "$BUDGET" in ''|*[!0-9]*) [ -z "$BUDGET" ] || die "--budget must be whole seconds (got '$BUDGET')" ;; esac
if [ "$INSTALL" = auto ]; then
  if [ "$SMOKE" = 1 ]; then INSTALL=no; else INSTALL=yes; fi
fi
WHEELS=${WHEELS:-$REPO/wheels}

# The wheels of distributions the environment lacks (a distribution installed in any version is left alone, so the
# box's own torch, numpy, ... are never replaced), one path a line.
missing_wheels() {
  "$PY" - "$1" <<'PYTHON'
import sys
from importlib import metadata
from pathlib import Path

def canonical(name):
    return name.lower().replace("_", "-").replace(".", "-")

have = {canonical(d.metadata["Name"] or "") for d in metadata.distributions()}
for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    if canonical(wheel.name.split("-")[0]) not in have:
        print(wheel)
PYTHON
}

# Every requirement of phinetune[bench] is installed at a version that satisfies it; one line per one that is not.
check_requirements() {
  "$PY" - <<'PYTHON'
import sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:  # packaging is not always installed on its own; pip always carries it
    from pip._vendor.packaging.requirements import Requirement

bad = []
for spec in metadata.requires("phinetune") or []:
    req = Requirement(spec)
    if req.marker is not None and not req.marker.evaluate({"extra": "bench"}):
        continue
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        bad.append(f"{req.name}{req.specifier}: not installed")
        continue
    if req.specifier and not req.specifier.contains(version, prereleases=True):
        bad.append(f"{req.name}{req.specifier}: {version} is installed")
for line in bad:
    print(f"  phinetune[bench] needs {line}", file=sys.stderr)
sys.exit(1 if bad else 0)
PYTHON
}

install() {
  [ -d "$WHEELS" ] || die "wheel folder $WHEELS does not exist; fill it on a connected machine with scripts/download_gpu_wheels.sh (or pass --wheels DIR, or --no-install)"
  local target=() wheels=()
  if [ -n "$SITE" ]; then
    mkdir -p "$SITE"
    SITE=$(cd "$SITE" && pwd)
    target=(--target "$SITE")
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  fi
  mapfile -t wheels < <(missing_wheels "$WHEELS")
  echo "gpu_check: installing ${#wheels[@]} wheel(s) from $WHEELS (the others are installed already)"
  if [ "${#wheels[@]}" -gt 0 ]; then
    "$PY" -m pip install --no-index --no-deps --no-compile --disable-pip-version-check -q "${target[@]}" "${wheels[@]}" \
      || die "pip could not install the wheels of $WHEELS (its message is above)"
  fi
  # phinetune from this tree. A box whose setuptools can build a wheel (>= 70.1, or >= 64 with the wheel package)
  # builds it in place; otherwise pip builds it in an isolated environment with the setuptools wheel from the folder
  # (download_gpu_wheels.sh always fetches one).
  local build=(--find-links "$WHEELS")
  if "$PY" - 2>/dev/null <<'PYTHON'
import importlib.util, sys
import setuptools
v = tuple(int(x) for x in setuptools.__version__.split(".")[:2])
sys.exit(0 if v >= (70, 1) or (v >= (64, 0) and importlib.util.find_spec("wheel")) else 1)
PYTHON
  then
    build=(--no-build-isolation)
  fi
  "$PY" -m pip install --no-index --no-deps --upgrade --disable-pip-version-check -q "${build[@]}" "${target[@]}" "$REPO" \
    || die "pip could not install phinetune from $REPO (its message is above)"
  check_requirements || die "some requirements of phinetune[bench] are missing (listed above): add their wheels to $WHEELS with scripts/download_gpu_wheels.sh"
  echo "gpu_check: every requirement of phinetune[bench] is installed"
}

SECONDS=0
if [ "$INSTALL" = yes ]; then install; fi
[ "$ONLY_INSTALL" = 1 ] && exit 0
SPENT=$SECONDS

mkdir -p "$CHECK_DIR" || die "cannot make the report folder $CHECK_DIR"
if [ -z "$WORK" ]; then
  # The random-weight models (7.6 GB each on a GPU) go to a temporary folder, never into the report folder.
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/phinetune-gpu-check.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi
cd "$REPO"  # the steps name configs/accelerate/*.yaml relative to the repo
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"  # this tree's code, whatever else is installed
args=(run --out "$CHECK_DIR" --work "$WORK" --spent "$SPENT")
[ "$SMOKE" = 1 ] && args+=(--cpu-smoke)
[ -n "$BUDGET" ] && args+=(--budget "$BUDGET")
[ -n "$REALDATA" ] && args+=(--realdata "$REALDATA")
rc=0
"$PY" -m phinetune.bench.gpu_check "${args[@]}" || rc=$?
exit "$rc"
