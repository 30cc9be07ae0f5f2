"""serve/stream.py: streamed text never shows a stop string, even one split over several pieces."""

from phinetune.serve.stream import SSE_DONE, StopFilter, sse


def _run(pieces, stops):
    f = StopFilter(stops)
    return "".join(f.feed(p) for p in pieces) + f.flush(), f.stopped


def test_stop_split_over_pieces_is_held_back_and_cut():
    assert _run(["Hel", "lo ST", "O", "P and more"], ["STOP"]) == ("Hello ", True)
    assert _run(["abc", "def"], ["zz", "cd"]) == ("ab", True)


def test_without_a_stop_everything_comes_through_in_order():
    pieces = ["The ", "pia", "no has ", "S", "T", "keys"]
    assert _run(pieces, ["STOP"]) == ("".join(pieces), False)
    assert _run(pieces, []) == ("".join(pieces), False)


def test_sse_framing():
    assert sse({"a": "é"}) == 'data: {"a": "é"}\n\n' and SSE_DONE == "data: [DONE]\n\n"
