"""The `phinetune` command's root, which every verb module registers its commands on, and its command groups."""

from __future__ import annotations

import typer

# rich_markup_mode=None: help text is shown as written. Rich markup would read `phinetune[eval]` or
# `[CONFIG]` as style tags and drop them.
SETTINGS = dict(no_args_is_help=True, rich_markup_mode=None)
app = typer.Typer(
    help="Fine-tune Microsoft Phi models (LoRA, QLoRA, full) with no silent misconfiguration.",
    add_completion=False,
    pretty_exceptions_enable=False,
    **SETTINGS,
)


@app.callback()
def _global_options(
    verbose: bool = typer.Option(
        False, "--verbose", help="Show library warnings, logs and weight-loading bars (silenced by default)."
    ),
) -> None:
    """Options for every verb (main() reads --verbose before any library is imported)."""


def group(name: str, help: str) -> typer.Typer:
    """A command group (`phinetune bench ...`, `phinetune data ...`) under the root."""
    sub = typer.Typer(help=help, **SETTINGS)
    app.add_typer(sub, name=name)
    return sub
