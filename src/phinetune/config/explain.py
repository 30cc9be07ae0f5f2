"""The one explanation of a config error: a pydantic ValidationError as lines of `ORIGIN: what is wrong`.

ORIGIN says where the bad value was written, the same way for every config: `FILE:LINE` for a key in a YAML
file, `command line (key=value)` for a dotted override, `command line (--flag value)` for a verb's option that
fills a config section (data inspect's --max-length, judge's --concurrency); a rule about the config as a
whole names the file. Used by the run config (config/load.py), the synth config (synth/config.py) and
`from_flags`, which builds a config section from a verb's options.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from phinetune.errors import ConfigError

COMMAND_LINE = "command line"
Model = TypeVar("Model", bound=BaseModel)


def key_lines(path: Path) -> dict[tuple, int]:
    """(section, key, ...) -> 1-based line of each mapping key in a YAML file (unreadable: none)."""
    lines: dict[tuple, int] = {}

    def walk(node, prefix: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                here = prefix + (str(key.value),)
                lines[here] = key.start_mark.line + 1
                walk(value, here)

    try:
        walk(yaml.compose(path.read_text(encoding="utf-8-sig")), ())
    except (OSError, ValueError, yaml.YAMLError):
        pass
    return lines


def origins_of(path: Path | None, overrides: Iterable[str] = ()) -> dict[tuple, str]:
    """Where each key was set: `FILE:LINE` for the file's keys, then `command line (item)` for each override
    (a later one wins, as its value does)."""
    origins = {key: f"{path}:{line}" for key, line in key_lines(path).items()} if path else {}
    for item in overrides:
        origins[tuple(item.split("=", 1)[0].strip().split("."))] = f"{COMMAND_LINE} ({item})"
    return origins


def origin_of(loc: tuple, origins: Mapping[tuple, str], source: str) -> str:
    """The longest known prefix of `loc` (an override of `train` as a whole covers `train.x`), else the file."""
    for n in range(len(loc), 0, -1):
        if loc[:n] in origins:
            return origins[loc[:n]]
    deeper = [where for key, where in origins.items() if key[: len(loc)] == loc]  # `modle.name=x` makes `modle`
    return deeper[-1] if deeper else source


def explain(
    exc: ValidationError,
    source: str,
    origins: Mapping[tuple, str],
    hint: Callable[[tuple], str | None] = lambda loc: None,
    key_path: Callable[[tuple], tuple] = lambda loc: loc,
    names: Mapping[str, str] | None = None,
    tags: Sequence[str] = (),
) -> str:
    """One line per error. `hint(loc)`: the key an unknown one probably meant; `key_path(loc)`: the key as the
    user wrote it (a discriminated union adds its tag to pydantic's loc); `names`: a key as the user typed it
    (a flag); `tags`: a discriminated union's tags, offered when an entry has none."""
    overridden = any(o.startswith(COMMAND_LINE) for o in origins.values())
    lines = []
    for err in exc.errors():
        path = key_path(tuple(str(p) for p in err["loc"]))
        key = (names or {}).get(".".join(path), ".".join(path))
        where = origin_of(path, origins, source)
        ctx = err.get("ctx", {})
        if err["type"] == "extra_forbidden":
            meant = hint(err["loc"])
            lines.append(f"{where}: unknown key '{key}'" + (f"; did you mean '{meant}'?" if meant else ""))
        elif err["type"] == "union_tag_not_found":
            lines.append(f"{where}: '{key}' has no {ctx['discriminator']}; set it to one of {sorted(tags)}")
        elif err["type"] == "union_tag_invalid":
            lines.append(
                f"{where}: '{key}.{ctx['discriminator'].strip(chr(39))}' must be one of {sorted(tags)} "
                f"(got {ctx.get('tag')!r})"
            )
        elif path:
            got = "" if err["type"] == "missing" else f" (got {err.get('input')!r:.80})"
            lines.append(f"{where}: '{key}': {err['msg']}{got}")
        else:
            also = " with the command-line overrides" if overridden else ""
            lines.append(f"{source}{also}: {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def from_flags(section: type[Model], flags: Mapping[str, str], /, **values: Any) -> Model:
    """A config section from a verb's options (`flags`: field -> the option that sets it). A bad value is a
    ConfigError like any config's, its origin the option: `command line (--max-length 0): '--max-length': ...`."""
    try:
        return section(**values)
    except ValidationError as exc:
        origins = {(field,): f"{COMMAND_LINE} ({flag}{_typed(values.get(field))})" for field, flag in flags.items()}
        raise ConfigError(explain(exc, COMMAND_LINE, origins, names=flags)) from None


def _typed(value: Any) -> str:
    """A value as it was typed after its flag; nothing for one that is no single word (a mapping, a list)."""
    return f" {value}" if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
