"""Tiny, random-weight versions of each Phi architecture, built from the same specs as the real ones.

They power the embedded default run and the tests: same module names, same chat format, no download.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PhiConfig, Phi3Config, PhimoeConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

from phinetune.models.specs import SPECS, TINY_MODELS, ModelSpec
from phinetune.models.templates import read_template

TINY_SIZES = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=1024)


def tiny_config(spec: ModelSpec, vocab_size: int, special_ids: dict[str, int], **overrides) -> PretrainedConfig:
    """A small config of the spec's architecture; `special_ids` holds bos/eos/pad ids of the tokenizer."""
    sizes = {**TINY_SIZES, **overrides}
    kv = sizes["num_attention_heads"] if spec.num_kv_heads == spec.num_heads else sizes["num_attention_heads"] // 2
    common = dict(vocab_size=vocab_size, num_key_value_heads=kv, tie_word_embeddings=spec.tie_word_embeddings,
                  **special_ids, **sizes)
    builders = {
        "phi": lambda: PhiConfig(partial_rotary_factor=spec.partial_rotary_factor, **common),
        "phi3": lambda: Phi3Config(partial_rotary_factor=spec.partial_rotary_factor, **common),
        "phimoe": lambda: PhimoeConfig(num_local_experts=4, num_experts_per_tok=2, attention_bias=spec.attention_bias,
                                       lm_head_bias=spec.lm_head_bias, **common),
    }
    return builders[spec.model_type]()


def tiny_special_tokens(spec: ModelSpec) -> list[str]:
    # Phi-2 is a base model: its tokenizer has only <|endoftext|>; ChatML tokens are added at load time
    # exactly as for the real model, so the tiny version exercises that path too.
    if spec.model_type == "phi":
        return ["<|endoftext|>"]
    return ["<|endoftext|>", "<unk>", "<s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]


def training_corpus() -> list[str]:
    """Texts the built-in tokenizer is trained on: the bundled riddles plus ASCII coverage."""
    path = resources.files("phinetune.assets").joinpath("riddles.jsonl")
    texts = [m["content"] for line in path.read_text().splitlines() if line.strip() for m in json.loads(line)["messages"]]
    return texts + ["".join(chr(c) for c in range(32, 127))]


def build_tokenizer(spec: ModelSpec, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE in-process (deterministic, about a second) with the spec's special tokens."""
    specials = tiny_special_tokens(spec)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    names = dict(eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    if spec.model_type != "phi":
        names.update(bos_token="<s>", unk_token="<unk>")
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, **names)
    if spec.model_type != "phi":
        hf.chat_template = read_template(spec.template)
    return hf


def build_tiny(name: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A seeded random-weight tiny model and its tokenizer for a tiny-* name."""
    from transformers import AutoModelForCausalLM

    spec = SPECS[TINY_MODELS[name]]
    tokenizer = build_tokenizer(spec)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = tiny_config(spec, vocab_size=_round_up(len(tokenizer), 64), special_ids=ids)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    return model, tokenizer


def save_tiny(name: str, out: Path, seed: int = 0) -> Path:
    """Materialize a tiny model as a normal local checkpoint, so it loads through the same code as any model."""
    model, tokenizer = build_tiny(name, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple
