"""progress.py: library noise stays off unless --verbose, even where a library resets its own logger."""

import io
import logging

from phinetune import progress


def test_deepspeeds_import_line_is_silenced_though_it_resets_its_logger(monkeypatch):
    monkeypatch.delenv("PHINETUNE_VERBOSE", raising=False)
    progress.silence_libraries()
    out = io.StringIO()
    logger = logging.getLogger("DeepSpeed")  # what DeepSpeed's LoggerFactory does at import: level reset, own handler
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    try:
        logger.warning("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.")
        logger.error("a real DeepSpeed error")
    finally:
        logger.removeHandler(handler)
    assert out.getvalue() == "a real DeepSpeed error\n"
