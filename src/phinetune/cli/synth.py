"""`phinetune synth`: seed questions grown into training conversations by a teacher model."""

from __future__ import annotations

import typer

from phinetune.cli.app import app
from phinetune.cli.options import ConfigOption, split_args, with_config_option


@app.command()
def synth(
    args: list[str] | None = typer.Argument(
        None,
        help="A synth config (see configs/synth/), followed by dotted overrides like stages.riddles.calls=5.",
        show_default=False,
    ),
    config_option: ConfigOption = None,
) -> None:
    """Grow seed questions into multi-turn conversations with a teacher model; re-run the same command to resume."""
    from phinetune.errors import PhinetuneError

    config, overrides = split_args(with_config_option(args, config_option))
    if config is None:
        raise PhinetuneError("give a synth config first, e.g. phinetune synth configs/synth/riddles.yaml")
    from phinetune.synth.config import load_synth_config
    from phinetune.synth.run import run_synth

    run_synth(load_synth_config(config, overrides))
