"""Chat templates ship as versioned .jinja files (data, not code)."""

from importlib import resources


def read_template(name: str) -> str:
    return resources.files("phinetune.templates").joinpath(name).read_text()
