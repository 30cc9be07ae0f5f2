"""GGUF export, proven by llama.cpp itself (llama-cpp-python): same tokens, same logits, same answer, same stop.

Tolerances (max |logit difference| over every position of three chat prompts, the PyTorch fp32 merged
model as reference; logits of these trained tiny models span about -7 to +15):
  f32 5e-3 (float rounding; llama.cpp sums in another order), f16 0.02, bf16 0.1, q8_0 0.3, q4_0 2.5 (4-bit
  weights). Greedy answers must match PyTorch token for token for f32/f16/q8_0 and still contain the
  trained answer for q4_0; every greedy answer stops at the end-of-turn token.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from phinetune.errors import PhinetuneError
from phinetune.export.gguf import supported_arch, write_gguf
from phinetune.export.merge import merge_run
from phinetune.models.specs import SPECS

SKIP_REASON = (
    "llama-cpp-python is not installed (pip install 'phinetune[export]'; it builds llama.cpp from source, "
    "and .ci/llama-cpp-python caches the wheel under ~/.cache/phinetune/wheels)"
)

TOLERANCE = {"f32": 5e-3, "f16": 0.02, "bf16": 0.1, "q8_0": 0.3, "q4_0": 2.5}
RIDDLES = 3


def riddles(n: int = RIDDLES) -> list[list[dict]]:
    from importlib import resources

    path = resources.files("phinetune.assets").joinpath("riddles.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row["messages"][:2] for row in rows[:n]]


class Reference:
    """The PyTorch merged model: prompts, logits and greedy answers to compare the runtime against."""

    def __init__(self, merged):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.dir = merged
        self.tokenizer = AutoTokenizer.from_pretrained(merged)
        self.model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
        self.stop_ids = json.loads((merged / "generation_config.json").read_text())["eos_token_id"]
        self.prompts = [
            self.tokenizer.apply_chat_template(m[:1], add_generation_prompt=True, tokenize=False) for m in riddles()
        ]
        self.answers = [m[1]["content"] for m in riddles()]

    def ids(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def logits(self, ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.tensor([ids])).logits[0].numpy()

    def greedy(self, ids: list[int], n: int = 48) -> list[int]:
        with torch.no_grad():
            out = self.model.generate(
                torch.tensor([ids]),
                max_new_tokens=n,
                do_sample=False,
                eos_token_id=self.stop_ids,
                pad_token_id=self.stop_ids[0],
            )
        return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason=SKIP_REASON)


@pytest.fixture(scope="module")
def exported(llama_cpp, memorized_run, tmp_path_factory):
    """name -> (Reference, {qtype: gguf path})."""
    cache = {}

    def make(name: str, qtypes=("f16", "q8_0", "q4_0")):
        if name not in cache:
            root = tmp_path_factory.mktemp(f"gguf-{name}")
            merged = merge_run(str(memorized_run(name)), str(root / "merged"), dtype="fp32")
            cache[name] = (Reference(merged), {})
        ref, files = cache[name]
        for q in qtypes:
            if q not in files:
                files[q] = write_gguf(ref.dir, ref.dir.parent / f"model-{q}.gguf", q)
        return ref, files

    return make


def load(path, n_ctx: int = 512):
    """llama.cpp's Llama on a GGUF, its weights in llama.cpp's plain CPU buffers.

    Why not its extra buffer types (weights repacked for AMX and other CPU kernels), the default: with
    llama-cpp-python 0.3.36 built natively on a Xeon with amx_int8, every q8_0 and q4_0 decode segfaults in
    them (a random tiny-phi3 and the sweep's hidden-256 model alike; f16 runs), and use_extra_bufts off runs
    them. These tests check our files and their numbers, which those kernels do not change; llama-cpp-python's
    constructor has no argument for it, so its defaults are swapped for the call."""
    import llama_cpp
    import llama_cpp.llama_cpp as low

    defaults = low.llama_model_default_params

    def plain_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    low.llama_model_default_params = plain_buffers
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2, seed=0)
    finally:
        low.llama_model_default_params = defaults


def runtime_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def measure(ref: Reference, llm) -> tuple[float, float]:
    """(max |logit diff|, share of positions whose top token agrees) over all prompt positions."""
    diffs, agree, total = [], 0, 0
    for prompt in ref.prompts:
        ids = ref.ids(prompt)
        ours, theirs = ref.logits(ids), runtime_logits(llm, ids)
        diffs.append(float(np.abs(ours - theirs).max()))
        agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        total += len(ids)
    return max(diffs), agree / total


def greedy_runtime(llm, ids: list[int], n: int = 48) -> tuple[list[int], str]:
    llm.reset()
    out = llm.create_completion(prompt=ids, max_tokens=n, temperature=0.0, top_k=1)
    text = out["choices"][0]["text"]
    return text, out["choices"][0]["finish_reason"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-phi3", "tiny-phi2"])
def test_llama_cpp_agrees_with_pytorch(exported, name, record_property):
    ref, files = exported(name)
    for qtype, path in files.items():
        llm = load(path)
        meta = llm.metadata
        assert meta["tokenizer.chat_template"] == ref.tokenizer.chat_template
        spec = SPECS[json.loads((ref.dir / "phinetune.json").read_text())["spec"]]
        assert int(meta["tokenizer.ggml.eot_token_id"]) == ref.tokenizer.convert_tokens_to_ids(spec.end_of_turn)
        for prompt in ref.prompts:  # the vocabulary is llama.cpp's own now: same ids for the same text
            assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ref.ids(prompt)
        worst, top1 = measure(ref, llm)
        record_property(f"{name}-{qtype}", {"max_abs_logit_diff": worst, "top1_agreement": top1})
        print(f"PARITY {name} {qtype} max|dlogit|={worst:.4g} top1={top1:.3f}")
        assert worst <= TOLERANCE[qtype], f"{qtype}: max |logit diff| {worst:.4g} > {TOLERANCE[qtype]}"
        recalled = 0
        for prompt, answer in zip(ref.prompts, ref.answers):
            ids = ref.ids(prompt)
            expected = ref.greedy(ids)
            text, finish = greedy_runtime(llm, ids)
            assert finish == "stop", f"{qtype}: generation did not stop at the end-of-turn token: {text!r}"
            if qtype in ("f32", "f16", "q8_0"):
                assert text == ref.tokenizer.decode(expected, skip_special_tokens=True), qtype
            recalled += answer in text
        assert recalled >= 2, f"{qtype}: only {recalled}/{RIDDLES} trained answers came back"
        llm.close()


@pytest.mark.slow
def test_chat_completion_uses_the_embedded_template_and_stops(exported):
    ref, files = exported("tiny-phi3")
    llm = load(files["q8_0"])
    question, answer = riddles(1)[0]
    out = llm.create_chat_completion(messages=[question], max_tokens=64, temperature=0.0, top_k=1)
    assert out["choices"][0]["finish_reason"] == "stop"
    assert answer["content"] in out["choices"][0]["message"]["content"]
    llm.close()


@pytest.mark.slow
def test_phi4_mini_layout_partial_rotary_tied_longrope(llama_cpp, tmp_path):
    """Phi-4-mini's layout (GQA, partial rotary 0.75, tied embeddings) with LongRoPE factors, random weights."""
    from transformers import AutoModelForCausalLM

    from phinetune.models.tiny import build_tiny

    model, tokenizer = build_tiny("tiny-phi4")
    config = model.config
    rot = int(config.partial_rotary_factor * config.hidden_size // config.num_attention_heads) // 2
    gen = torch.Generator().manual_seed(0)
    config.rope_parameters = {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "partial_rotary_factor": config.partial_rotary_factor,
        "original_max_position_embeddings": 256,
        "short_factor": (1 + torch.rand(rot, generator=gen)).tolist(),
        "long_factor": (1 + 4 * torch.rand(rot, generator=gen)).tolist(),
    }
    config.original_max_position_embeddings = 256
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    path = write_gguf(tmp_path / "m", tmp_path / "m.gguf", "f32")
    llm = load(path, n_ctx=256)  # a context within original_max_position_embeddings: short factors on both sides
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What has keys?"}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    with torch.no_grad():
        expected = model.eval()(torch.tensor([ids])).logits[0].numpy()
    got = runtime_logits(llm, ids)
    assert np.abs(expected - got).max() <= TOLERANCE["f32"] * 10
    llm.close()


@pytest.mark.parametrize("name", ["tiny-phi3", "tiny-phi4", "tiny-phimoe", "tiny-phi2"])
def test_gguf_metadata_and_tensor_types(tmp_path, name):
    """Without llama.cpp: metadata and per-tensor types, read back with gguf's own reader."""
    import gguf

    from phinetune.models.tiny import save_tiny

    folder = save_tiny(name, tmp_path / name)
    path = write_gguf(folder, tmp_path / "m.gguf", "q4_0")
    reader = gguf.GGUFReader(str(path))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    shapes = {t.name: [int(d) for d in t.shape] for t in reader.tensors}
    config = json.loads((folder / "config.json").read_text())
    arch = field("general.architecture")
    assert arch == {"phi3": "phi3", "phi": "phi2", "phimoe": "phimoe"}[config["model_type"]]
    assert (
        field(f"{arch}.block_count") == config["num_hidden_layers"]
        and field(f"{arch}.embedding_length") == config["hidden_size"]
    )
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    rotary = config.get("partial_rotary_factor") or (config.get("rope_parameters") or {}).get(
        "partial_rotary_factor", 1.0
    )
    assert field(f"{arch}.rope.dimension_count") == int(rotary * head_dim)
    assert len(field("tokenizer.ggml.tokens")) == config["vocab_size"]
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    assert all(v == "F32" for k, v in types.items() if k.endswith((".bias", "norm.weight")))
    assert all(
        v == "Q4_0" for k, v in types.items() if k.endswith(("ffn_down.weight", "attn_qkv.weight", "attn_q.weight"))
    )
    assert ("output.weight" in types) == (not config.get("tie_word_embeddings"))  # tied: llama.cpp reuses token_embd
    assert (
        types.get("output.weight", types["token_embd.weight"] if config.get("tie_word_embeddings") else None) == "Q8_0"
    )
    if name == "tiny-phimoe":
        assert shapes["blk.0.ffn_gate_exps.weight"] == [
            config["hidden_size"],
            config["intermediate_size"],
            config["num_local_experts"],
        ]
        assert types["blk.0.ffn_gate_inp.weight"] == "F32"
    if name != "tiny-phi2":
        assert field("tokenizer.chat_template") == (folder / "chat_template.jinja").read_text()


@pytest.mark.slow
def test_real_phi3_vocabulary_is_sentencepiece_style(tmp_path):
    """The real Phi-3 tokenizer (byte-fallback BPE from SentencePiece) becomes llama.cpp's "llama" vocabulary."""
    import gguf
    from transformers import AutoTokenizer

    from conftest import realdata
    from phinetune.models.tiny import tiny_config

    source = realdata("phi3-mini-4k-instruct_tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(source)
    from transformers import AutoModelForCausalLM

    config = tiny_config(SPECS["phi3-mini-4k"], vocab_size=32064, special_ids={}, num_hidden_layers=1)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "phinetune.json").write_text(json.dumps({"spec": "phi3-mini-4k"}))
    reader = gguf.GGUFReader(str(write_gguf(tmp_path / "m", tmp_path / "m.gguf", "f16")))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama" and len(tokens) == 32064
    assert tokens[tokenizer.convert_tokens_to_ids("<|end|>")] == "<|end|>"
    assert reader.fields["tokenizer.ggml.eot_token_id"].contents() == tokenizer.convert_tokens_to_ids("<|end|>")


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured: llama.cpp tokenizes the real Phi-3 SentencePiece vocabulary differently from "
    "transformers v5 (whitespace after added tokens such as <|user|>, leading spaces)",
)
def test_real_phi3_tokenization_in_llama_cpp_matches_transformers(llama_cpp, tmp_path):
    from transformers import AutoTokenizer

    test_real_phi3_vocabulary_is_sentencepiece_style(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "m")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), vocab_only=True, verbose=False)
    texts = [
        "Hello world! What has keys but can't open locks?",
        "<|user|>\nRiddle: 12 apples<|end|>\n<|assistant|>\n",
        "  two spaces\tand\ttabs",
    ]
    mismatched = [
        t
        for t in texts
        if llm.tokenize(t.encode(), add_bos=False, special=True) != tokenizer(t, add_special_tokens=False)["input_ids"]
    ]
    llm.close()
    assert mismatched == []


@pytest.mark.xfail(
    strict=True,
    reason="llama.cpp's phimoe graph is its phi3 graph: RMSNorm (+bias) where transformers' "
    "Phimoe uses LayerNorm, and softmax top-k routing where it uses sparsemixer",
)
def test_phimoe_in_llama_cpp_agrees_with_pytorch(llama_cpp, tmp_path):
    """Measured divergence, kept as a strict xfail so that a llama.cpp that fixes it turns this test red."""
    from transformers import AutoModelForCausalLM

    from phinetune.models.tiny import save_tiny

    folder = save_tiny("tiny-phimoe", tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    llm = load(write_gguf(folder, tmp_path / "m.gguf", "f32"))
    ids = list(range(3, 40))
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    worst = float(np.abs(expected - runtime_logits(llm, ids)).max())
    print(f"PARITY tiny-phimoe f32 max|dlogit|={worst:.4g}")
    llm.close()
    assert worst <= TOLERANCE["f32"]


def test_unsupported_architecture_is_one_sentence():
    with pytest.raises(PhinetuneError, match="GGUF export supports the Phi architectures"):
        supported_arch("llama")
