"""progress.py: library noise stays off unless --verbose, even where a library resets its own logger."""

import io
import logging

import pytest

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


def test_clip_cuts_at_a_word_boundary_and_marks_the_cut():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from phinetune.progress import clip

    words = st.lists(st.text(alphabet="abcdefghij.,é", min_size=1, max_size=12), min_size=1, max_size=30)
    spaces = st.sampled_from([" ", "  ", "\n", "\t"])

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(
        words.flatmap(lambda ws: st.tuples(st.just(ws), st.lists(spaces, min_size=len(ws), max_size=len(ws)))),
        st.integers(4, 80),
    )
    def check(pair, limit):
        ws, gaps = pair
        text = "".join(w + g for w, g in zip(ws, gaps)).strip()
        out = clip(text, limit)
        if len(text) <= limit:
            assert out == text
            return
        assert len(out) <= limit and out.endswith("…")
        kept = out[:-1]
        assert text.startswith(kept) and kept.strip()
        # the longest whole-word prefix that leaves room for the ellipsis, separators before the cut dropped
        cuts = [i for i in range(1, limit) if text[i].isspace()]
        whole = text[: max(cuts)].rstrip().rstrip(",;:").rstrip() if cuts else ""
        # inside a word only where whole words would fill less than half the room: then as much as fits
        assert kept == (whole if len(whole) >= limit // 2 else text[: limit - 1])

    check()
    assert clip("and flats. The pattern helps", 23) == "and flats. The pattern…"
    assert clip("supercalifragilistic", 10) == "supercali…"  # one long word: cut inside it rather than show nothing


HUB_PROBE = r"""
import os, sys, tempfile
reached = []

def refuse(event, args):  # every name lookup and connection is recorded and refused at once
    if event in ("socket.getaddrinfo", "socket.connect"):
        reached.append(str(args[0]))
        raise OSError("no network in this test")

sys.addaudithook(refuse)
from phinetune.progress import no_hub_kernels
no_hub_kernels()
import peft  # imports bitsandbytes, which asks the kernels package for its Hub kernels
from transformers import AutoModelForCausalLM
from phinetune.models.tiny import build_tiny
model, tokenizer = build_tiny("tiny-phi3")
folder = tempfile.mkdtemp()
model.save_pretrained(folder)
loaded = AutoModelForCausalLM.from_pretrained(folder)
loaded(**tokenizer("What has keys?", return_tensors="pt"))
loaded.train()
print("loaded", loaded.use_kernels, reached)
# the probe sees a Hub request when one is made: the kernels package without the override
del os.environ["LOCAL_KERNELS"]
from kernels import get_kernel
try:
    get_kernel("kernels-community/quantization-bitsandbytes", version=1)
except Exception:
    pass
print("direct", reached)
"""


@pytest.mark.slow
def test_no_library_fetches_hub_kernels_when_a_model_is_imported_loaded_and_run(tmp_path):
    """Online (HF_HUB_OFFLINE unset), importing peft/bitsandbytes and loading and running a model make no Hub request."""
    import os
    import subprocess
    import sys

    from conftest import SRC

    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "USE_HUB_KERNELS", "LOCAL_KERNELS")
    }
    proc = subprocess.run(
        [sys.executable, "-c", HUB_PROBE],
        env={**env, "PYTHONPATH": str(SRC), "HF_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("loaded ", "direct ")))
    assert lines["loaded"] == "False []"  # transformers kept the PyTorch layers; nothing asked the Hub
    assert "huggingface.co" in lines["direct"]  # the probe does see a Hub request
