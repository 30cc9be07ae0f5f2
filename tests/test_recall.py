"""train/recall.py: the recall check's examples show the model's text whole up to a word boundary, never cut mid-word."""

from __future__ import annotations

from phinetune.progress import console
from phinetune.train.recall import first_sentence, show_examples


def test_examples_cut_long_model_text_at_a_word_boundary_with_an_ellipsis():
    trained = (
        "The white keys play the main notes, and the black keys play the in-between notes called sharps and flats. "
        "The pattern helps players find their place."
    )
    with console.capture() as out:
        show_examples(
            ["Why do pianos have black and white keys?", "What has keys?"],
            [first_sentence(trained), "A piano."],
            [trained, "A piano.\n\nIt has   keys."],
        )
    lines = out.get().splitlines()
    assert lines[2] == (
        "  model:   The white keys play the main notes, and the black keys play the in-between notes called sharps "
        "and flats. The pattern…"
    )  # not "... The pattern he"
    assert (
        lines[1]
        == "  trained: The white keys play the main notes, and the black keys play the in-between notes called sharps and flats."
    )
    assert lines[5] == "  model:   A piano. It has keys."  # short text whole, on one line
