"""The `phinetune` command: one module per verb group, each of which only parses options and calls the library.

- app.py: the root command and its groups; options.py: every option more than one verb takes, declared once
- train.py: train, check, launch-template    data.py: data inspect    infer.py: generate, chat, compare
- eval.py: eval, judge, report    export.py: merge, export, push    serve.py: serve    synth.py: synth
- models.py: inspect, plan    bench.py: bench infer, serve, train

main() is the console script: a PhinetuneError (bad input) becomes one sentence and exit code 2.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys

# Each module registers its verbs; `phinetune --help` lists them in this order, the order of the pipeline.
from phinetune.cli import bench, data, eval, export, infer, models, serve, synth, train  # noqa: F401, I001
from phinetune.cli.app import app
from phinetune.errors import PhinetuneError, path_error
from phinetune.progress import console, escape, no_hub_kernels, silence_libraries

__all__ = ["app", "main", "print_error"]


def print_error(message: str) -> None:
    console.print(f"[bold red]error:[/bold red] {escape(message)}", markup=True, highlight=False)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "--verbose" in sys.argv[1:2]:  # known before any library is imported (bitsandbytes logs at import)
        os.environ["PHINETUNE_VERBOSE"] = "1"
    no_hub_kernels()
    silence_libraries()
    # Nothing is left to collect when the interpreter exits: without this, its last garbage collections walk the
    # whole torch/transformers heap, 1.2 s of every command that imported them (measured: 6.0 -> 4.8 s for a bare
    # `import phinetune.train.recipe`). Objects are still finalized by reference counting, files closed by their
    # `with` blocks. At exit only (atexit), so a caller that runs main() in-process keeps collecting garbage.
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    try:
        app()
    except PhinetuneError as exc:
        print_error(str(exc))
        if (
            os.environ.get("PHINETUNE_LAUNCHED") == "1"
        ):  # a rank of `train --nproc N`: the launcher names it with this sentence
            from phinetune.train.distributed.launch import record_for_launcher

            record_for_launcher(str(exc))
        sys.exit(getattr(exc, "exit_code", 2))  # a stop on SIGTERM/Ctrl-C exits 143/130, after its checkpoint
    except OSError as exc:
        if exc.filename is None:  # not about a path the user gave: a bug, keep its traceback
            raise
        print_error(path_error(exc))
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
