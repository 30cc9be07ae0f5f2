"""infer/complete.py + runs/loading.py: batching, sampling, stopping, and every kind of target and dtype."""

from __future__ import annotations

import pytest
import torch

from phinetune.errors import PhinetuneError
from phinetune.infer.complete import Sampling, chat_prompt, complete, generate_batch, stream_reply
from phinetune.runs.loading import Loaded, load_for_inference

CONVS = [
    [{"role": "user", "content": "What has keys but cannot open locks?"}],
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What gets wetter the more it dries? Think."},
    ],
]


@pytest.fixture(scope="module")
def base(tiny_run):
    """The random-weight tiny base, by its id: varied tokens, so batching mistakes would show."""
    return load_for_inference("tiny-phi3", "fp32")


def test_batched_answers_equal_one_by_one(base):
    greedy = Sampling(max_new_tokens=12)
    together = generate_batch(base, CONVS, greedy)
    alone = [generate_batch(base, [c], greedy)[0] for c in CONVS]
    assert together == alone
    assert len(set(alone)) > 1  # the prompts really lead to different answers


def _raw_tokens(loaded: Loaded, conv, n: int) -> list[int]:
    enc = loaded.tokenizer(chat_prompt(loaded, conv), return_tensors="pt", add_special_tokens=False)
    out = loaded.model.generate(**enc, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, enc["input_ids"].shape[1] :].tolist()


def test_stops_at_the_stop_token_and_counts_it(base):
    tokens = _raw_tokens(base, CONVS[0], 10)
    k = next(i for i in range(1, len(tokens)) if tokens[i] not in tokens[:i])
    stopped = Loaded(base.model, base.tokenizer, base.spec, [tokens[k]], base.source)
    [res] = complete(stopped, [chat_prompt(base, CONVS[0])], Sampling(max_new_tokens=10))
    assert res.finish_reason == "stop" and res.completion_tokens == k + 1
    assert res.text == base.tokenizer.decode(tokens[:k], skip_special_tokens=True)
    unstopped = Loaded(base.model, base.tokenizer, base.spec, [], base.source)
    [full] = complete(unstopped, [chat_prompt(base, CONVS[0])], Sampling(max_new_tokens=10))
    assert full.finish_reason == "length" and full.completion_tokens == 10


def test_stop_string_cuts_the_text(base):
    unstopped = Loaded(base.model, base.tokenizer, base.spec, [], base.source)
    prompt = [chat_prompt(base, CONVS[0])]
    [full] = complete(unstopped, prompt, Sampling(max_new_tokens=12))
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    [cut] = complete(unstopped, prompt, Sampling(max_new_tokens=12), stop=[stop])
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.index(stop)]


def test_sampling_seed_topk_and_validation(base):
    hot = Sampling(max_new_tokens=12, temperature=1.5, seed=7)
    first, again = generate_batch(base, CONVS[:1], hot), generate_batch(base, CONVS[:1], hot)
    other = generate_batch(base, CONVS[:1], Sampling(max_new_tokens=12, temperature=1.5, seed=8))
    assert first == again and first != other
    top1 = generate_batch(base, CONVS, Sampling(max_new_tokens=12, temperature=1.0, top_k=1, seed=3))
    assert top1 == generate_batch(base, CONVS, Sampling(max_new_tokens=12))  # top-1 sampling is greedy
    for bad in [dict(temperature=-1), dict(top_p=0.0), dict(top_k=-2), dict(max_new_tokens=0)]:
        ((name, value),) = bad.items()
        with pytest.raises(
            PhinetuneError, match=rf"^{name} must .*\(got {value}\)$"
        ):  # names the setting, not the whole object
            Sampling(**bad)


@pytest.mark.parametrize(
    "dtype,quant,expect",
    [
        ("bf16", "none", torch.bfloat16),
        ("fp16", "none", torch.float16),
        ("fp32", "none", torch.float32),
        ("auto", "nf4", None),
    ],
)
def test_run_folder_in_every_dtype(tiny_run, dtype, quant, expect):
    loaded = load_for_inference(str(tiny_run), dtype, quant)
    kinds = {type(m).__name__ for m in loaded.model.modules()}
    assert any("lora_A" in name for name, _ in loaded.model.named_parameters())  # the adapter is on
    if quant == "nf4":
        assert "Linear4bit" in kinds
    else:
        assert loaded.model.get_base_model().model.layers[0].self_attn.qkv_proj.base_layer.weight.dtype == expect
    [res] = complete(loaded, [chat_prompt(loaded, CONVS[0])], Sampling(max_new_tokens=4))
    assert 1 <= res.completion_tokens <= 4


def test_merged_folder_answers_like_the_run(tiny_run, tmp_path):
    from phinetune.export.merge import merge_run

    merged = merge_run(str(tiny_run), str(tmp_path / "merged"), dtype="fp32")
    run, flat = load_for_inference(str(tiny_run), "fp32"), load_for_inference(str(merged), "fp32")
    assert not hasattr(flat.model, "disable_adapter") and flat.spec.key == run.spec.key
    assert flat.stop_ids == run.stop_ids
    enc = run.tokenizer(chat_prompt(run, CONVS[0]), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        tuned, merged_logits = run.model(**enc).logits, flat.model(**enc).logits
        with run.model.disable_adapter():
            before = run.model(**enc).logits
    assert torch.allclose(merged_logits, tuned, atol=1e-4)
    assert not torch.allclose(before, tuned, atol=1e-2)  # and the adapter did change the model
    assert generate_batch(flat, CONVS, Sampling(max_new_tokens=10)) == generate_batch(
        run, CONVS, Sampling(max_new_tokens=10)
    )


def test_streamed_reply_equals_the_batch_answer(base):
    greedy = Sampling(max_new_tokens=12)
    assert "".join(stream_reply(base, CONVS[0], greedy)).strip() == generate_batch(base, CONVS[:1], greedy)[0]


def _reference_greedy(model, ids: list[int], n: int) -> list[int]:
    """The path as it was before `decode_kernels`: plain generate, oneDNN as torch sets it, no stop token."""
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()


def _spy_mkldnn(model) -> tuple[list[bool], object]:
    """Whether oneDNN was on at each call of the model's last MLP projection (one call per forward)."""
    seen: list[bool] = []
    layer = next(m for name, m in model.named_modules() if name.endswith("down_proj") or name.endswith("fc2"))
    return seen, layer.register_forward_hook(lambda *_: seen.append(torch.backends.mkldnn.enabled))


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_batch1_decode_steps_switch_kernels_and_keep_greedy_tokens(tiny_run, dtype):
    loaded = load_for_inference("tiny-phi3", dtype)
    unstopped = Loaded(loaded.model, loaded.tokenizer, loaded.spec, [], loaded.source)
    for conv in CONVS:
        ids = loaded.tokenizer(chat_prompt(loaded, conv), add_special_tokens=False)["input_ids"]
        seen, hook = _spy_mkldnn(loaded.model)
        [res] = complete(unstopped, [ids], Sampling(max_new_tokens=10))
        hook.remove()
        assert seen == [True] + [False] * 9  # prefill with oneDNN's GEMM, each one-token step with torch's GEMV
        assert torch.backends.mkldnn.enabled  # and restored afterwards
        assert res.token_ids == _reference_greedy(loaded.model, ids, 10)


def test_a_run_folder_with_a_saved_embedding_switches_too(tiny_run):
    """The tiny run trains embed_tokens and lm_head (PEFT wraps them): the hook must still see every forward."""
    run = load_for_inference(str(tiny_run), "bf16")
    unstopped = Loaded(run.model, run.tokenizer, run.spec, [], run.source)
    seen, hook = _spy_mkldnn(run.model)
    complete(unstopped, [chat_prompt(run, CONVS[1])], Sampling(max_new_tokens=5))
    hook.remove()
    assert seen == [True] + [False] * 4 and torch.backends.mkldnn.enabled


def test_batched_and_fp32_generation_keep_onednn(base, tiny_run):
    seen, hook = _spy_mkldnn(base.model)  # fp32: the switch is for 16-bit weights only
    complete(base, [chat_prompt(base, CONVS[0])], Sampling(max_new_tokens=4))
    hook.remove()
    bf16 = load_for_inference("tiny-phi3", "bf16")
    seen16, hook = _spy_mkldnn(bf16.model)  # a batch of 3: every matmul has 3+ rows, where oneDNN is the faster
    complete(bf16, [chat_prompt(bf16, c) for c in CONVS], Sampling(max_new_tokens=4))
    hook.remove()
    assert seen and all(seen) and seen16 and all(seen16)


def test_the_onednn_flag_is_restored_when_generation_fails(tiny_run):
    loaded = load_for_inference("tiny-phi3", "bf16")
    calls = []

    def fail_on_third_step(*_):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")

    hook = loaded.model.get_input_embeddings().register_forward_hook(fail_on_third_step)
    with pytest.raises(RuntimeError, match="boom"):
        complete(loaded, [chat_prompt(loaded, CONVS[0])], Sampling(max_new_tokens=8))
    hook.remove()
    assert torch.backends.mkldnn.enabled and len(calls) == 3


@pytest.mark.slow
def test_phi3_mini_width_greedy_tokens_equal_the_reference():
    """At the real width (hidden 3072, intermediate 8192) the two GEMVs round differently in places; the greedy
    tokens must still be those of the reference path."""
    from transformers import Phi3Config, Phi3ForCausalLM

    from phinetune.models.specs import get_spec
    from phinetune.models.tiny import build_tiny

    _, tok = build_tiny("tiny-phi3")
    config = Phi3Config(
        vocab_size=2048,
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=1,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = Phi3ForCausalLM(config).to(torch.bfloat16).eval()
    loaded = Loaded(model, tok, get_spec("tiny-phi3"), [], "phi3-mini-width")
    for seed in range(3):
        ids = torch.randint(0, 2048, (24,), generator=torch.Generator().manual_seed(seed)).tolist()
        [res] = complete(loaded, [ids], Sampling(max_new_tokens=12))
        assert res.token_ids == _reference_greedy(model, ids, 12)


def test_closing_a_stream_cancels_generation_and_joins_its_thread(base):
    """What Ctrl-C in chat does to a reply (the caller stops reading): generation ends at its next token and its thread
    is gone when close() returns. A thread left inside torch when the interpreter exits aborts the process."""
    import threading

    from phinetune.infer.complete import STREAM_THREAD

    n = 300
    assert (
        complete(base, [chat_prompt(base, CONVS[0])], Sampling(max_new_tokens=n))[0].completion_tokens == n
    )  # left alone: n steps
    forwards = []
    hook = base.model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        pieces = stream_reply(base, CONVS[0], Sampling(max_new_tokens=n))
        next(pieces)
        pieces.close()
        assert not [t for t in threading.enumerate() if t.name == STREAM_THREAD]
        steps = len(forwards)
    finally:
        hook.remove()
    assert steps < n // 2
