"""Refresh constraints.txt, the exact versions a fresh machine installs (the README's commands pass `-c constraints.txt`).

    python scripts/refresh_constraints.py          # try the newest versions pyproject.toml allows, in a scratch venv
    python scripts/refresh_constraints.py freeze   # write constraints.txt from the packages this Python has installed

Without arguments: a scratch virtual environment (under the system temp folder) runs the README's test command
without the constraints file, so pip picks the newest release of every dependency within pyproject.toml's
bounds, and the whole suite runs on them. Only if it passes is constraints.txt rewritten (from that environment,
by `freeze`), and the changed versions are listed. If it fails, constraints.txt stays as it is and the venv is
kept, with the versions that differ from the file printed, to find the release that broke it; bound that one
in pyproject.toml (the next minor, with a comment saying why) and run again. To try past an upper bound, raise
it in pyproject.toml first. The suite takes several minutes; `--keep` keeps the venv after a pass too.

`freeze` lists phinetune[dev] and everything it needs, transitively (markers evaluated for this Python and
platform), at the installed versions: not whatever else the environment holds. torch is listed without its
local build label (2.13.0, not 2.13.0+cpu), which every build of that version satisfies.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
CONSTRAINT_FLAG = " -c constraints.txt"


def readme_test_command() -> str:
    """The README's "Install and run the tests" command, as CI (.ci/run) runs it."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("**Install and run the tests:**", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return block.strip()


def installed_closure(root: str = "phinetune", extras: tuple[str, ...] = ("dev",)) -> dict[str, str]:
    """{distribution name: installed version} for `root[extras]` and all it requires, transitively."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
    except ImportError:  # packaging comes with transformers
        raise SystemExit("phinetune[dev] is not installed in this Python: nothing to freeze") from None

    versions: dict[str, str] = {}
    done: set[tuple[str, str]] = set()
    todo = [(root, extra) for extra in extras or ("",)]
    while todo:
        name, extra = todo.pop()
        key = canonicalize_name(name)
        if (key, extra) in done:
            continue
        done.add((key, extra))
        dist = distribution(name)
        versions[dist.metadata["Name"]] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            try:
                distribution(req.name)
            except PackageNotFoundError:
                raise SystemExit(
                    f"{req.name} (required by {name}) is not installed: install phinetune[dev] first"
                ) from None
            todo += [(req.name, "")] + [(req.name, e) for e in req.extras]
    versions.pop(next(n for n in versions if canonicalize_name(n) == canonicalize_name(root)))
    return versions


def parse(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)$", text, flags=re.M))


def freeze(out: Path = CONSTRAINTS) -> dict[str, str]:
    versions = {name: version.split("+", 1)[0] for name, version in installed_closure().items()}
    header = (
        f"# The exact versions the whole suite passed with (Python {platform.python_version()}, {platform.system()} "
        f"{platform.machine()}, {date.today()}).\n"
        "# The README's commands install with `-c constraints.txt`; scripts/refresh_constraints.py rewrites this file.\n"
    )
    out.write_text(header + "".join(f"{name}=={versions[name]}\n" for name in sorted(versions, key=str.lower)))
    return versions


def refresh(keep: bool) -> int:
    command = readme_test_command()
    if CONSTRAINT_FLAG not in command:
        raise SystemExit(f"the README's test command no longer passes{CONSTRAINT_FLAG}: {command}")
    work = Path(tempfile.mkdtemp(prefix="phinetune-refresh-"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    newest = command.replace(CONSTRAINT_FLAG, "")
    print(f"in {venv}:\n  {newest}", flush=True)
    passed = subprocess.run(["bash", "-c", newest], cwd=ROOT, env=env).returncode == 0
    old = parse(CONSTRAINTS.read_text()) if CONSTRAINTS.exists() else {}
    candidate = work / "constraints.txt"
    frozen = (
        subprocess.run([str(venv / "bin" / "python"), __file__, "freeze", str(candidate)], cwd=ROOT, env=env).returncode
        == 0
    )
    if frozen:
        new = parse(candidate.read_text())
        changed = [
            f"  {name}: {old.get(name, '-')} -> {new.get(name, '-')}"
            for name in sorted(set(old) | set(new), key=str.lower)
            if old.get(name) != new.get(name)
        ]
        print(
            "\n".join(["versions that differ from constraints.txt:", *changed] if changed else ["no version changed"])
        )
    if not (passed and frozen):
        print(
            f"the {'suite' if frozen else 'installation'} failed on the newest versions: constraints.txt is unchanged; "
            f"the venv is kept at {venv}"
        )
        return 1
    shutil.copyfile(candidate, CONSTRAINTS)
    print(f"the suite passed: {CONSTRAINTS} rewritten")
    if not keep:
        shutil.rmtree(work)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["freeze"]:
        freeze(Path(argv[1]) if len(argv) > 1 else CONSTRAINTS)
        return 0
    if argv and argv != ["--keep"]:
        print(__doc__)
        return 2
    return refresh(keep=argv == ["--keep"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
