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


def test_clip_cuts_at_a_word_boundary_and_marks_the_cut():
    from hypothesis import given, settings, strategies as st

    from phinetune.progress import clip

    words = st.lists(st.text(alphabet="abcdefghij.,é", min_size=1, max_size=12), min_size=1, max_size=30)
    spaces = st.sampled_from([" ", "  ", "\n", "\t"])

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(words.flatmap(lambda ws: st.tuples(st.just(ws), st.lists(spaces, min_size=len(ws), max_size=len(ws)))), st.integers(4, 80))
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
        whole = text[:max(cuts)].rstrip().rstrip(",;:").rstrip() if cuts else ""
        # inside a word only where whole words would fill less than half the room: then as much as fits
        assert kept == (whole if len(whole) >= limit // 2 else text[:limit - 1])

    check()
    assert clip("and flats. The pattern helps", 23) == "and flats. The pattern…"
    assert clip("supercalifragilistic", 10) == "supercali…"  # one long word: cut inside it rather than show nothing
