#!/usr/bin/env bash
# Download, on a connected machine, the wheels scripts/gpu_check.sh installs on an offline GPU box: everything
# phinetune[bench] needs beyond what the box already has. Never torch (nor transformers, peft, accelerate).
#
#   scripts/download_gpu_wheels.sh [--dest DIR] [--python 3.10|3.11|3.12] [--platform TAG ...] [--have FILE]
#
#   --dest      where the wheels go (default wheels/ in the repo root, ignored by git)
#   --python    the GPU box's Python version (default 3.12); cp310, cp311 and cp312 wheels are the choices
#   --platform  a pip platform tag, repeatable (default: manylinux x86_64, glibc 2.17 to 2.35)
#   --have      the box's `python3 -m pip list --format=freeze` (name==version lines): what it already has is
#               not downloaded. Without it the box is assumed to have torch, transformers, peft and accelerate
#               (at the versions installed here; any version where one is not) and nothing else.
#
# How: pip resolves phinetune[bench]'s requirements for the target with the box's packages stood in for by empty
# "stub" wheels (same names, versions NAME==V+have, no dependencies), so their own dependencies (torch's CUDA
# wheels...) are never fetched; the stubs are then removed. Prints the folder's size: a lent device machine
# carries at most 64 MiB with the working tree (docs/speed.md).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
DEST="$REPO/wheels" TARGET_PY=3.12 HAVE="" PLATFORMS=()

die() { echo "error: $*" >&2; exit 2; }
need_value() { if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (scripts/download_gpu_wheels.sh --help)"; fi; }

while [ "$#" -gt 0 ]; do
  case "$1" in
    --dest) need_value "$@"; DEST=$2; shift 2 ;;
    --python) need_value "$@"; TARGET_PY=$2; shift 2 ;;
    --platform) need_value "$@"; PLATFORMS+=("$2"); shift 2 ;;
    --have) need_value "$@"; HAVE=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1'; see scripts/download_gpu_wheels.sh --help" ;;
  esac
done
case "$TARGET_PY" in 3.10|3.11|3.12) ;; *) die "--python must be 3.10, 3.11 or 3.12 (got '$TARGET_PY')" ;; esac
[ -z "$HAVE" ] || [ -f "$HAVE" ] || die "--have $HAVE is not a file (on the GPU box: python3 -m pip list --format=freeze > have.txt)"
if [ "${#PLATFORMS[@]}" -eq 0 ]; then
  PLATFORMS=(manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64
             manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64)
fi
mkdir -p "$DEST"
STUBS=$(mktemp -d "${TMPDIR:-/tmp}/phinetune-stubs.XXXXXX")
trap 'rm -rf "$STUBS"' EXIT

# The requirements (phinetune + its bench extra + setuptools to build it) one a line, after writing a stub wheel and
# a constraint for each package the box has.
mapfile -t REQS < <("$PY" - "$REPO/pyproject.toml" "$STUBS" "$HAVE" <<'PYTHON'
import re
import sys
import zipfile
from importlib import metadata
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

pyproject, stubs, have_file = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
project = tomllib.loads(pyproject.read_text())["project"]
reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["bench"]) + ["setuptools>=64"]

def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()

have = {}
if have_file:
    for line in Path(have_file).read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and name and not name.startswith("#"):
            have[canonical(name)] = version.strip()
for name in ("torch", "transformers", "peft", "accelerate"):  # the box's four, never downloaded
    if canonical(name) not in have:
        try:
            have[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            have[name] = "9999"  # "any version": satisfies every floor in our requirements
constraints = []
have.pop("setuptools", None)  # always fetched: the installer builds phinetune with it where the box's cannot
for name, version in sorted(have.items()):
    stub = f"{version.split('+')[0]}+have"
    dist = name.replace("-", "_")
    info = f"{dist}-{stub}.dist-info"
    with zipfile.ZipFile(stubs / f"{dist}-{stub}-py3-none-any.whl", "w") as z:
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {stub}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: phinetune-stub\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    constraints.append(f"{name}=={stub}")
(stubs / "constraints.txt").write_text("\n".join(constraints) + "\n")
print("\n".join(reqs))
PYTHON
)
[ "${#REQS[@]}" -gt 0 ] || die "could not read the requirements of $REPO/pyproject.toml"

platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
abi="cp${TARGET_PY/./}"
"$PY" -m pip download --disable-pip-version-check --only-binary=:all: --implementation cp --python-version "$TARGET_PY" \
  --abi "$abi" --abi abi3 --abi none "${platform_args[@]}" --find-links "$STUBS" -c "$STUBS/constraints.txt" -d "$DEST" "${REQS[@]}" \
  || die "pip download failed (its message is above); a package without a $abi wheel for these platforms needs another --platform"
rm -f "$DEST"/*+have-py3-none-any.whl
if compgen -G "$DEST/torch-*.whl" >/dev/null || compgen -G "$DEST/nvidia_*.whl" >/dev/null; then
  die "$DEST holds torch or CUDA wheels, which the GPU box has; remove them (the --have list must name torch)"
fi
count=$(find "$DEST" -maxdepth 1 -name '*.whl' | wc -l)
bytes=$(find "$DEST" -maxdepth 1 -name '*.whl' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
echo "download_gpu_wheels: $count wheels in $DEST, $((bytes / 1048576)) MiB ($bytes bytes), for CPython $TARGET_PY"
