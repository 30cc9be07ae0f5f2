"""What a report section is (a title, its HTML, its Markdown) and where its HTML comes from: the Jinja2 templates in
report/templates/, escaped by Jinja (autoescape). report/page.py and report/before_after.py build sections from them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import jinja2
from markupsafe import Markup, escape

ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(resources.files("phinetune.report") / "templates")),
    autoescape=True,
    keep_trailing_newline=True,
)


@dataclass
class Section:
    title: str
    html: str
    md: str


def light_markdown(text: str) -> Markup:
    """Escaped text with **bold**, `code` and '- ' list bullets rendered (what small chat models actually emit)."""
    out = str(escape(text))
    out = re.sub(r"`([^`\n]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*\n]+)\*\*", r"<strong>\1</strong>", out)
    return Markup(re.sub(r"(?m)^(\s*)[-*] ", r"\1• ", out))


ENV.filters["light_markdown"] = light_markdown
BLOCKS = ENV.get_template("blocks.html.jinja").module  # macros: table, pre, note, muted, marked, figures
BEFORE_AFTER = ENV.get_template("before_after.html.jinja").module  # macros: glance, judge, checkpoints, conversations


def html_table(
    header: list[str], rows: list[list], numeric: set[int] = frozenset(), row_class=None, css: str = ""
) -> str:
    classes = [row_class(k) or "" for k in range(len(rows))] if row_class else []
    return BLOCKS.table(header, rows, numeric, classes, css)
