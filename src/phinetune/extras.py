"""Optional dependencies: a verb that needs an extra says which one, in one sentence, before any slow work.

The one place that asks whether a package is installed (`installed`) and the one sentence when it is not
(`require`); tests/test_extras.py fails on another `find_spec`, `except ImportError` or install hint in src/.
"""

from __future__ import annotations

import importlib.util

from phinetune.errors import PhinetuneError

# The module name where the pip name differs.
PIP_NAMES = {
    "onnxruntime_genai": "onnxruntime-genai",
    "onnx_ir": "onnx-ir",
    "lm_eval": "lm-eval",
    "prometheus_client": "prometheus-client",
    "llama_cpp": "llama-cpp-python",
    "liger_kernel": "liger-kernel",
}


def installed(module: str) -> bool:
    """Whether `module` can be imported, found without importing it (mlflow or deepspeed take seconds to import)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # its parent package is missing, or the module's spec is unset
        return False


def require(
    what: str, extra: str, *modules: str, error: type[PhinetuneError] = PhinetuneError, instead: str = ""
) -> None:
    """Raise `<what> needs <packages>, which is not installed: pip install 'phinetune[<extra>]'<instead>` when any of
    `modules` is missing; `instead` offers another way out (", or remove it from train.report_to")."""
    missing = [PIP_NAMES.get(name, name) for name in modules if not installed(name)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        names = " and ".join(missing)
        raise error(f"{what} needs {names}, which {verb} not installed: pip install 'phinetune[{extra}]'{instead}")
