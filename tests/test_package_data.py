"""pyproject.toml's package data: every pattern it lists ships at least one file from src/phinetune."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_data_pattern_matches_files_in_the_package():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    empty = [pattern for pattern in data["phinetune"] if not list((ROOT / "src" / "phinetune").glob(pattern))]
    assert not empty, f"package data with no file in src/phinetune: {empty}"
