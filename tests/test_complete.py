"""infer/complete.py + runs/loading.py: batching, sampling, stopping, and every kind of target and dtype."""

from __future__ import annotations

import pytest
import torch

from phinetune.errors import PhinetuneError
from phinetune.infer.complete import Sampling, chat_prompt, complete, generate_batch, stream_reply
from phinetune.runs.loading import Loaded, load_for_inference

CONVS = [[{"role": "user", "content": "What has keys but cannot open locks?"}],
         [{"role": "user", "content": "Hi"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What gets wetter the more it dries? Think."}]]


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
    return out[0, enc["input_ids"].shape[1]:].tolist()


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
    stop = full.text[len(full.text) // 2:len(full.text) // 2 + 2]
    [cut] = complete(unstopped, prompt, Sampling(max_new_tokens=12), stop=[stop])
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.index(stop)]


def test_sampling_seed_topk_and_validation(base):
    hot = Sampling(max_new_tokens=12, temperature=1.5, seed=7)
    first, again = generate_batch(base, CONVS[:1], hot), generate_batch(base, CONVS[:1], hot)
    other = generate_batch(base, CONVS[:1], Sampling(max_new_tokens=12, temperature=1.5, seed=8))
    assert first == again and first != other
    top1 = generate_batch(base, CONVS, Sampling(max_new_tokens=12, temperature=1.0, top_k=1, seed=3))
    assert top1 == generate_batch(base, CONVS, Sampling(max_new_tokens=12))  # top-1 sampling is greedy
    for bad in [dict(temperature=-1), dict(top_p=0.0), dict(top_k=-2), dict(max_new_tokens=0)]:
        (name, value), = bad.items()
        with pytest.raises(PhinetuneError, match=rf"^{name} must .*\(got {value}\)$"):  # names the setting, not the whole object
            Sampling(**bad)


@pytest.mark.parametrize("dtype,quant,expect", [("bf16", "none", torch.bfloat16), ("fp16", "none", torch.float16),
                                                ("fp32", "none", torch.float32), ("auto", "nf4", None)])
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
    assert generate_batch(flat, CONVS, Sampling(max_new_tokens=10)) == generate_batch(run, CONVS, Sampling(max_new_tokens=10))


def test_streamed_reply_equals_the_batch_answer(base):
    greedy = Sampling(max_new_tokens=12)
    assert "".join(stream_reply(base, CONVS[0], greedy)).strip() == generate_batch(base, CONVS[:1], greedy)[0]
