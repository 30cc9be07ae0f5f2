"""Write a merged Phi model folder as one GGUF file for llama.cpp (and so Ollama, LM Studio, ...).

Built on the `gguf` package (the llama.cpp project's own Python writer): `GGUFWriter` for the file,
`get_tensor_name_map` for the tensor names, `SpecialVocab` for merges, special ids and the chat template,
`LlamaHfVocab` for SentencePiece-style vocabularies, and `gguf.quants` for Q8_0/Q4_0/BF16 blocks.

Why not llama.cpp's `convert_hf_to_gguf.py`: no wheel installs it (it ships only inside the llama.cpp and
llama-cpp-python source trees); it recognises a BPE pre-tokenizer only by hashing the output of tokenizers
it has seen on the Hub, so it refuses a tokenizer that was retrained or extended (phinetune's built-in
tiny models, Phi-2 with added ChatML tokens); its Phi-3 path insists on a `tokenizer.model` file that
`save_pretrained` no longer writes. The per-architecture facts below follow its `conversion/phi.py`
(hyper-parameters, LongRoPE factor tensors and attention factor, per-expert tensors stacked to 3-D),
and the tests check the result by loading it in llama.cpp itself.

Fused Phi-3 modules need no splitting here: llama.cpp's phi3 graph reads `attn_qkv` and a fused
`ffn_up` (gate and up halves) directly.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from phinetune.errors import PhinetuneError

# model_type -> gguf architecture. Anything else gets a one-sentence refusal.
ARCHES = {"phi": "PHI2", "phi3": "PHI3", "phimoe": "PHIMOE"}
QTYPES = ("f16", "bf16", "q8_0", "q4_0", "f32")

# Tensors llama.cpp wants in F32 whatever the file type (as convert_hf_to_gguf does): norms and biases
# (1-D), rope factors, and the MoE router, whose small logits decide which experts run.
_F32_NAMES = ("ffn_gate_inp", "rope_factors")
_EXPERTS = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight")


def supported_arch(model_type: str) -> str:
    if model_type not in ARCHES:
        raise PhinetuneError(
            f"GGUF export supports the Phi architectures {', '.join(sorted(ARCHES))} (config.json model_type); "
            f"this model is '{model_type}'"
        )
    return ARCHES[model_type]


def greedy(path: Path, ids: list[int], max_new_tokens: int) -> list[int]:
    """llama.cpp's own greedy continuation of `ids` from a GGUF file (llama-cpp-python): the new token ids, ending with
    the stop token when generation stopped at the file's end-of-text or end-of-turn token."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(ids) + max_new_tokens, verbose=False, n_threads=2, seed=0)
    keys = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
    stops = {int(llm.metadata[key]) for key in keys if key in llm.metadata}
    tokens: list[int] = []
    for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        tokens.append(int(token))
        if token in stops or len(tokens) >= max_new_tokens:
            break
    llm.close()
    return tokens


def write_gguf(model_dir: Path, out_file: Path, qtype: str = "f16") -> Path:
    """Convert a transformers folder (merged weights + tokenizer) into `out_file`."""
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    if qtype not in QTYPES:
        raise PhinetuneError(f"--quant must be one of {', '.join(QTYPES)} (got '{qtype}')")
    config = AutoConfig.from_pretrained(model_dir)
    arch = getattr(gguf.MODEL_ARCH, supported_arch(config.model_type))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    writer = gguf.GGUFWriter(str(out_file), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(model_dir.name)
    writer.add_file_type(_file_type(qtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _hparams(writer, config)
    _vocab(writer, model_dir, tokenizer, config.vocab_size)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for name, tensor in _tensors(model_dir, config):
        gguf_name = name if name.startswith("rope_factors") else names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise PhinetuneError(
                f"{model_dir}: tensor '{name}' has no llama.cpp name for {config.model_type}; this checkpoint layout is not supported"
            )
        data, raw_dtype = _encode(
            gguf_name, tensor.float().numpy(), qtype, tied=getattr(config, "tie_word_embeddings", False)
        )
        writer.add_tensor(gguf_name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file


def _file_type(qtype: str):
    import gguf

    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    }[qtype]


def _rope(config) -> dict:
    params = dict(getattr(config, "rope_parameters", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0) or 1.0)
    return params


def _hparams(w, config) -> None:
    n_embd, n_head = config.hidden_size, config.num_attention_heads
    rope = _rope(config)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(n_embd)
    w.add_block_count(config.num_hidden_layers)
    w.add_head_count(n_head)
    w.add_head_count_kv(getattr(config, "num_key_value_heads", None) or n_head)
    w.add_rope_dimension_count(int(rope["partial_rotary_factor"] * n_embd) // n_head)
    w.add_rope_freq_base(rope["rope_theta"])
    if config.model_type == "phi":
        w.add_feed_forward_length(config.intermediate_size)
        w.add_layer_norm_eps(config.layer_norm_eps)
        return
    w.add_feed_forward_length(config.intermediate_size)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_scaling_orig_ctx_len(
        rope.get("original_max_position_embeddings")
        or getattr(config, "original_max_position_embeddings", None)
        or config.max_position_embeddings
    )
    # llama.cpp tells Phi-4-mini (no sliding window) from Phi-3 by a zero window.
    w.add_sliding_window(getattr(config, "sliding_window", None) or 0)
    if config.model_type == "phimoe":
        w.add_expert_count(config.num_local_experts)
        w.add_expert_used_count(config.num_experts_per_tok)
    if _long_factors(config):
        orig = rope.get("original_max_position_embeddings") or config.original_max_position_embeddings
        scale = config.max_position_embeddings / orig
        # Same attention factor as transformers' longrope (and convert_hf_to_gguf).
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0)


def _long_factors(config):
    rope = _rope(config)
    if str(rope.get("rope_type", "")).lower() in ("longrope", "su") and rope.get("long_factor"):
        return rope["long_factor"], rope["short_factor"]
    return None


def _vocab(w, model_dir: Path, tokenizer, n_vocab: int) -> None:
    """Tokens, types, merges, special ids, chat template and end-of-turn into the metadata."""
    import gguf

    tok_json = json.loads((model_dir / "tokenizer.json").read_text())
    model = tok_json.get("model", {})
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        # Phi-3/3.5 (and MoE): a SentencePiece vocabulary stored as byte-fallback BPE in tokenizer.json.
        vocab = gguf.LlamaHfVocab(model_dir)
        tokens, scores, types = zip(*vocab.all_tokens()) if vocab.vocab_size else ((), (), ())
        tokens, scores, types = list(tokens), list(scores), list(types)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        load_merges = False
    elif model.get("type") == "BPE":
        tokens, types = _gpt2_tokens(tokenizer)
        scores = None
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(_bpe_pre(tok_json, model_dir))
        load_merges = True
    else:
        raise PhinetuneError(
            f"{model_dir / 'tokenizer.json'}: tokenizer model '{model.get('type')}' is not one llama.cpp reads (expected BPE)"
        )
    for i in range(len(tokens), n_vocab):  # embedding rows past the tokenizer (Phi-3 pads 32011 -> 32064)
        tokens.append(f"[PAD{i}]".encode())
        types.append(gguf.TokenType.UNUSED)
        if scores is not None:
            scores.append(-10000.0)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if scores is not None:
        w.add_token_scores(scores)
    special = gguf.SpecialVocab(model_dir, load_merges=load_merges, n_vocab=len(tokens))
    special.chat_template = tokenizer.chat_template or special.chat_template
    special.add_to_gguf(w, quiet=True)
    w.add_add_bos_token(
        bool(tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id])
    )
    eot = _end_of_turn(model_dir, tokenizer)
    if eot is not None:
        w.add_eot_token_id(eot)


def _end_of_turn(model_dir: Path, tokenizer):
    """The spec's end-of-turn token (recorded by merge in the merged folder's marker); llama.cpp stops there."""
    from phinetune.models.specs import SPECS
    from phinetune.runs.run_dir import merged_spec_key

    spec = SPECS.get(merged_spec_key(model_dir) or "")
    name = spec.end_of_turn if spec else None
    return tokenizer.get_vocab().get(name) if name else None


def _gpt2_tokens(tokenizer):
    """Byte-level BPE tokens by id, as convert_hf_to_gguf's get_vocab_base: added special tokens are CONTROL."""
    import gguf

    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(max(reverse) + 1):
        text = reverse.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]".encode())
            types.append(gguf.TokenType.UNUSED)
        elif text in added:
            tokens.append(text.encode())
            types.append(gguf.TokenType.CONTROL if added[text].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(text.encode())
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


# The GPT-4o split regex (Phi-4-mini's tokenizer); llama.cpp's "gpt-4o" pre-tokenizer implements it.
_GPT4O = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"


def _bpe_pre(tok_json: dict, model_dir: Path) -> str:
    """llama.cpp's pre-tokenizer name, read from the pre-tokenizer's structure rather than a hash.

    GPT-2's byte-level regex (Phi-2, and phinetune's tiny tokenizers) is llama.cpp's "gpt-2"; Phi-4-mini's
    split regex is "gpt-4o". Anything else would tokenize differently in llama.cpp, so it is refused.
    """
    pre = tok_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre])
    if len(parts) == 1 and parts[0].get("type") == "ByteLevel" and parts[0].get("use_regex", True):
        return "gpt-2"
    splits = [p for p in parts if p.get("type") == "Split"]
    if splits and str(splits[0].get("pattern", {}).get("Regex", "")).startswith(_GPT4O):
        return "gpt-4o"
    raise PhinetuneError(
        f"{model_dir / 'tokenizer.json'}: its pre-tokenizer is neither GPT-2's byte-level split nor GPT-4o's, "
        "so llama.cpp would tokenize text differently; GGUF export supports those two"
    )


def _tensors(model_dir: Path, config):
    """(HF name, tensor) pairs; Phi-3.5-MoE's per-expert matrices stacked to llama.cpp's 3-D expert tensors."""
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    n_experts = getattr(config, "num_local_experts", 0)
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():
                m = _EXPERTS.fullmatch(name)
                if not m:
                    yield name, f.get_tensor(name)
                    continue
                layer, xid, w_name = int(m[1]), int(m[2]), m[3]
                group = experts.setdefault((layer, w_name), {})
                group[xid] = f.get_tensor(name)
                if len(group) == n_experts:
                    yield (
                        f"model.layers.{layer}.block_sparse_moe.experts.{w_name}.weight",
                        torch.stack([group[i] for i in range(n_experts)]),
                    )
                    del experts[(layer, w_name)]
    if experts:
        raise PhinetuneError(f"{model_dir}: incomplete expert tensors for layers {sorted({k[0] for k in experts})}")
    factors = _long_factors(config)
    if factors:
        yield "rope_factors_long.weight", torch.tensor(factors[0], dtype=torch.float32)
        yield "rope_factors_short.weight", torch.tensor(factors[1], dtype=torch.float32)


def _encode(name: str, data: np.ndarray, qtype: str, tied: bool):
    """Quantize one tensor the way llama.cpp's converter and quantizer do, returning (bytes array, dtype)."""
    import gguf
    from gguf.quants import quantize

    Q = gguf.GGMLQuantizationType
    if data.ndim <= 1 or any(part in name for part in _F32_NAMES) or qtype == "f32":
        return data.astype(np.float32), Q.F32
    target = {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[qtype]
    # As llama-quantize does for its 4-bit types, keep more bits where the logits are made: the output
    # matrix (the token embedding too when it doubles as the output).
    if target == Q.Q4_0 and (name == "output.weight" or (tied and name == "token_embd.weight")):
        target = Q.Q8_0
    if target in (Q.Q8_0, Q.Q4_0) and data.shape[-1] % gguf.GGML_QUANT_SIZES[target][0] != 0:
        target = Q.F16  # rows not a multiple of the 32-value block: llama.cpp's converter falls back the same way
    if target == Q.F16:
        return data.astype(np.float16), Q.F16
    return quantize(data, target), target
