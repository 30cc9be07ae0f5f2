"""serve/responses.py: the chat and text response shapes, pinned to the OpenAI API's documented fields."""

from __future__ import annotations

from phinetune.infer.complete import Completion
from phinetune.serve.logprobs import TokenLogprob
from phinetune.serve.responses import CHAT, TEXT
from phinetune.serve.worker import Output

RESULTS = [
    Output(Completion("Hello", 3, 2, "stop"), [1, 2, 3]),
    Output(Completion("Hi there", 4, 5, "length"), [1, 2, 3, 4]),
]
USAGE = {"prompt_tokens": 7, "completion_tokens": 7, "total_tokens": 14}


def test_chat_response():
    body = CHAT.response(RESULTS, "m")
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion" and body["model"] == "m"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop", "logprobs": None},
        {
            "index": 1,
            "message": {"role": "assistant", "content": "Hi there"},
            "finish_reason": "length",
            "logprobs": None,
        },
    ]
    assert body["usage"] == USAGE and isinstance(body["created"], int)


def test_text_response():
    body = TEXT.response(RESULTS, "m")
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["choices"] == [
        {"index": 0, "text": "Hello", "finish_reason": "stop", "logprobs": None},
        {"index": 1, "text": "Hi there", "finish_reason": "length", "logprobs": None},
    ]
    assert body["usage"] == USAGE


def test_chat_stream_chunks():
    assert CHAT.opening() == {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "finish_reason": None,
        "logprobs": None,
    }
    assert CHAT.delta("ab", None) == {"index": 0, "delta": {"content": "ab"}, "finish_reason": None, "logprobs": None}
    assert CHAT.delta(None, "stop") == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}
    chunk = CHAT.chunk("chatcmpl-1", "m", [], usage=USAGE)
    assert (
        chunk["object"] == "chat.completion.chunk"
        and chunk["choices"] == []
        and chunk["usage"] == USAGE
        and chunk["id"] == "chatcmpl-1"
    )


def test_text_stream_chunks():
    assert TEXT.opening() is None
    assert TEXT.delta("ab", None) == {"index": 0, "text": "ab", "finish_reason": None, "logprobs": None}
    assert TEXT.delta(None, "length") == {"index": 0, "text": "", "finish_reason": "length", "logprobs": None}
    assert TEXT.chunk("cmpl-1", "m", [])["object"] == "text_completion"


def test_logprobs_echo_and_n_shapes():
    tokens = [TokenLogprob("Hi", None, []), TokenLogprob(" there", -0.5, [(" there", -0.5), (" you", -1.5)])]
    out = Output(Completion(" there", 1, 1, "length", [7]), [5], tokens, prompt_text="Hi")
    text = TEXT.response([out], "m")["choices"][0]
    assert text["text"] == "Hi there"
    assert text["logprobs"] == {
        "tokens": ["Hi", " there"],
        "token_logprobs": [None, -0.5],
        "top_logprobs": [None, {" there": -0.5, " you": -1.5}],
        "text_offset": [0, 2],
    }
    chat = CHAT.response([Output(Completion(" there", 1, 1, "length", [7]), [5], tokens[1:])], "m")["choices"][0]
    assert chat["logprobs"]["content"] == [
        {
            "token": " there",
            "logprob": -0.5,
            "bytes": list(b" there"),
            "top_logprobs": [
                {"token": " there", "logprob": -0.5, "bytes": list(b" there")},
                {"token": " you", "logprob": -1.5, "bytes": list(b" you")},
            ],
        }
    ]
    two = CHAT.response([RESULTS[0], RESULTS[0]], "m", n=2)  # two choices of one prompt: the prompt counts once
    assert two["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
