"""Before anything asks the Hugging Face Hub for a name: is it a local path, a built-in model, cached, or reachable?

Without this, every uncached name on a machine without network costs ~50 s of retries inside
huggingface_hub before an error, and a mistyped folder (`runs/nope`) is tried as a Hub id and answered with
advice to download `runs/nope` from the Hub. Here a path-like name is never sent to the Hub, and one short probe
(a HEAD of the endpoint, PROBE_TIMEOUT seconds) decides whether the Hub is there; when it is not, the process
switches the libraries to offline mode, so cached names load at once and uncached ones fail at once.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path

from phinetune.errors import PhinetuneError

PROBE_TIMEOUT = 3.0


def snapshot_repo(path: str) -> str | None:
    """The Hub id whose Hugging Face cache snapshot folder `path` is (models--owner--name/snapshots/REV), else None.

    Such a folder is a copy of a Hub model, not the user's own: where it is gone, the id fetches it again."""
    found = re.search(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/[^/]+/?$", path)
    return f"{found.group(1)}/{found.group(2)}" if found else None


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def looks_like_path(name: str) -> bool:
    """`./x`, `/abs`, `~/x`, `a\\b`, `runs/a/b`, or `runs/nope` when `runs/` is a local folder: never a Hub id.

    A Hub id is `name` or `owner/name`; `owner/name` counts as a path only when `owner` exists here."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or name.endswith("/"):
        return True
    return "/" in name and Path(name.split("/")[0]).is_dir()


def offline_env() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """One HEAD request with a short timeout (no retries): any HTTP answer means the Hub is there."""
    if offline_env():
        return False
    import httpx

    try:
        httpx.head(endpoint(), timeout=PROBE_TIMEOUT)
        return True
    except httpx.HTTPError:
        go_offline()
        return False


def go_offline() -> None:
    """Offline mode for this process: huggingface_hub, transformers and datasets then use only the cache."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # read by each library at its import (and inherited by child processes)
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    # Libraries imported already keep the value they read: patch them (transformers asks huggingface_hub).
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_HUB_OFFLINE = True


def is_cached(repo_id: str, revision: str | None = None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "tokenizer_config.json"):
        try:
            if isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str):
                return True
        except Exception:  # an id huggingface_hub rejects (bad characters) is not cached
            return False
    return False


def builtin_hint(name: str) -> str:
    """'did you mean microsoft/Phi-3.5-mini-instruct? built-in models: tiny-phi3, ...' (the did-you-mean covers
    every spec's Hub id and the built-in names)."""
    from phinetune.models.specs import TINY_MODELS, closest_name

    close = closest_name(name)
    return (f"did you mean {close}? " if close else "") + f"built-in models: {', '.join(TINY_MODELS)}"


def download_advice(name: str) -> str:
    """How to put a Hub model into the local cache (huggingface_hub's `hf` command; `huggingface-cli` is gone)."""
    return f"run `hf download {name}` on a connected machine"


def check_model_name(name: str, revision: str | None = None, what: str = "model") -> None:
    """Return when `name` can be loaded without a long wait; else one sentence saying what to do.

    Local folders and built-in tiny names pass; a cached Hub id passes (offline mode is switched on when the
    Hub is unreachable, so loading it does not wait on retries); an uncached Hub id passes only when the Hub
    answers the probe."""
    from phinetune.models.specs import TINY_MODELS, closest_name

    if name in TINY_MODELS or Path(name).expanduser().exists():
        return
    if looks_like_path(name):
        raise PhinetuneError(
            f"could not load {what} '{name}': no such folder; pass a run folder from `phinetune train`, "
            f"a merged or model folder, a Hub id, or a built-in model ({builtin_hint(name)})"
        )
    reachable = hub_reachable()
    if reachable or is_cached(name, revision):
        return
    close = closest_name(name)
    if close:  # a typo of a Phi id or a built-in name: that is the news, the rest is why it failed
        raise PhinetuneError(
            f"could not load {what} '{name}': did you mean {close}? ('{name}' is not a local folder, a built-in "
            f"model or in the local Hugging Face cache, and the Hub, {endpoint()}, cannot be reached)"
        )
    # The folder comes first: `runs/nope` run from a folder without runs/ is as likely a mistyped path as a Hub id.
    raise PhinetuneError(
        f"could not load {what} '{name}': there is no folder {name} here ({Path.cwd()}), it is not a built-in "
        f"model ({builtin_hint(name)}), and no Hub model of that id is in the local Hugging Face cache "
        f"(the Hub, {endpoint()}, cannot be reached); pass a folder that exists, or for a Hub id "
        f"{download_advice(name)}"
    )


def check_dataset_access() -> None:
    """Before `datasets` asks the Hub for a dataset: switch to offline mode (cache only) when it is unreachable."""
    hub_reachable()


def dataset_cached(repo_id: str) -> bool:
    """Whether `datasets` may find `repo_id` offline: its files in the Hub cache or its arrow cache (a folder check)."""
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}"
    arrow = Path(os.environ.get("HF_DATASETS_CACHE", Path(constants.HF_HOME) / "datasets")) / repo_id.replace(
        "/", "___"
    )
    return hub.exists() or arrow.exists()


def require_datasets(repo_ids: list[str], what: str, instead: str) -> None:
    """Fail in seconds, before loading any model, when Hub datasets are neither reachable nor cached."""
    missing = [r for r in repo_ids if not dataset_cached(r)]
    if missing and not hub_reachable():
        raise PhinetuneError(
            f"{what} reads {', '.join(missing)} from the Hub ({endpoint()}), which cannot be reached, "
            f"and they are not in the local cache; {instead}"
        )
