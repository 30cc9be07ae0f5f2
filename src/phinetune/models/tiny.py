"""Tiny, random-weight versions of each Phi architecture, built from the same specs as the real ones.

They power the embedded default run and the tests: same module names, same chat format, no download.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Phi3Config, PhiConfig, PhimoeConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

from phinetune.models.specs import SPECS, TINY_MODELS, ModelSpec
from phinetune.models.templates import read_template

TINY_SIZES = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=1024
)


def tiny_config(spec: ModelSpec, vocab_size: int, special_ids: dict[str, int], **overrides) -> PretrainedConfig:
    """A small config of the spec's architecture; `special_ids` holds bos/eos/pad ids of the tokenizer."""
    sizes = {**TINY_SIZES, **overrides}
    kv = sizes["num_attention_heads"] if spec.num_kv_heads == spec.num_heads else sizes["num_attention_heads"] // 2
    common = dict(
        vocab_size=vocab_size,
        num_key_value_heads=kv,
        tie_word_embeddings=spec.tie_word_embeddings,
        **special_ids,
        **sizes,
    )
    builders = {
        "phi": lambda: PhiConfig(partial_rotary_factor=spec.partial_rotary_factor, **common),
        "phi3": lambda: Phi3Config(partial_rotary_factor=spec.partial_rotary_factor, **common),
        "phimoe": lambda: PhimoeConfig(
            num_local_experts=4,
            num_experts_per_tok=2,
            attention_bias=spec.attention_bias,
            lm_head_bias=spec.lm_head_bias,
            **common,
        ),
    }
    return builders[spec.model_type]()


CHATML_SEP = ("<|im_start|>", "<|im_sep|>", "<|im_end|>", "<|dummy_85|>")  # Phi-4 (14B) turn markers and its pad
TOOL_TOKENS = (
    "<|tool|>",
    "<|/tool|>",
    "<|tool_call|>",
    "<|/tool_call|>",
    "<|tool_response|>",
)  # Phi-4-mini, not special


def uses_im_sep(spec: ModelSpec) -> bool:
    return spec.template.startswith("phi4-") and spec.end_of_turn == "<|im_end|>"


def tiny_special_tokens(spec: ModelSpec) -> list[str]:
    # Phi-2 is a base model: its tokenizer has only <|endoftext|>; ChatML tokens are added at load time
    # exactly as for the real model, so the tiny version exercises that path too.
    if spec.model_type == "phi":
        return ["<|endoftext|>"]
    if uses_im_sep(spec):
        return ["<|endoftext|>", *CHATML_SEP]
    return ["<|endoftext|>", "<unk>", "<s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]


def tiny_plain_tokens(spec: ModelSpec) -> list[str]:
    """Added tokens the real tokenizer has but does not mark special (decode keeps them): Phi-4-mini's tool
    markers, and the reasoning tags of Phi-4-reasoning (placeholder tokens repurposed as <think>/</think>)."""
    plain = list(TOOL_TOKENS) if spec.tool_format == "phi4-mini" else []
    return plain + (list(spec.reasoning_tags) if spec.reasons and uses_im_sep(spec) else [])


def tiny_token_names(spec: ModelSpec) -> dict[str, str]:
    """eos/bos/unk/pad as the real tokenizer ships them, pitfalls included, so loading has to fix them here too:
    Phi-4's first tokenizer has pad = eos = <|endoftext|> (not the end of an assistant turn); Phi-4-reasoning's
    has eos <|im_end|> and pad <|dummy_85|>."""
    names = dict(
        eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    if uses_im_sep(spec) and spec.reasons:
        names.update(eos_token="<|im_end|>", pad_token="<|dummy_85|>")
    elif spec.model_type != "phi" and not uses_im_sep(spec):
        names.update(bos_token="<s>", unk_token="<unk>")
    return names


def training_corpus() -> list[str]:
    """Texts the built-in tokenizer is trained on: the bundled riddles plus ASCII coverage."""
    path = resources.files("phinetune.assets").joinpath("riddles.jsonl")
    texts = [
        m["content"] for line in path.read_text().splitlines() if line.strip() for m in json.loads(line)["messages"]
    ]
    return texts + ["".join(chr(c) for c in range(32, 127))]


def build_tokenizer(spec: ModelSpec, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE in-process (deterministic, about a second) with the spec's special tokens."""
    specials = tiny_special_tokens(spec)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, **tiny_token_names(spec))
    if tiny_plain_tokens(spec):
        hf.add_tokens([AddedToken(t, special=False, normalized=False) for t in tiny_plain_tokens(spec)])
    if spec.model_type != "phi":
        hf.chat_template = read_template(spec.template)
    return hf


def build_tiny(name: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A seeded random-weight tiny model and its tokenizer for a tiny-* name."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    spec = SPECS[TINY_MODELS[name]]
    tokenizer = build_tokenizer(spec)
    ids = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    config = tiny_config(spec, vocab_size=_round_up(len(tokenizer), 64), special_ids=ids)
    torch.manual_seed(seed)
    # The class itself, not from_config: under a DeepSpeed ZeRO-3 launch from_config builds inside zero.Init, whose
    # every parameter is a collective, while the main process builds this base alone (main_process_first): a
    # deadlock. The weights are the same either way (same seed, same init).
    model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config)
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
