"""Phi-2 specifics: ChatML added tokens, embedding padded to a multiple of 64, the new rows trained
(PEFT trainable tokens: only those rows), and fp16 refused with the reason printed."""

from __future__ import annotations

import pytest
import torch

from conftest import cli_here
from phinetune.config.schema import AdapterConfig, ModelConfig
from phinetune.errors import ConfigError
from phinetune.models.loading import choose_dtype, load_model, load_tokenizer, materialize_tiny
from phinetune.models.specs import SPECS
from phinetune.train.adapter import apply_adapter

SPEC = SPECS["phi2"]


@pytest.fixture(scope="module")
def phi2(tmp_path_factory):
    path = str(materialize_tiny("tiny-phi2", folder=tmp_path_factory.mktemp("base")))
    cfg = ModelConfig(name="tiny-phi2", dtype="fp32")
    tokenizer = load_tokenizer(path, cfg, SPEC)
    return path, cfg, tokenizer


def test_chatml_tokens_added_and_embedding_padded_to_64(phi2):
    path, cfg, tokenizer = phi2
    new_ids = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<PAD>"])
    assert len(set(new_ids)) == 3 and tokenizer.unk_token_id not in new_ids
    assert tokenizer.pad_token == "<PAD>"
    model = load_model(path, cfg, SPEC, tokenizer, choose_dtype("fp32", SPEC))
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows % 64 == 0 and rows >= len(tokenizer) > 1024  # grew past the original 1024
    assert model.get_output_embeddings().weight.shape[0] == rows
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tokenize=False
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"


def test_new_token_rows_train_and_old_rows_do_not(phi2):
    path, cfg, tokenizer = phi2
    model = load_model(path, cfg, SPEC, tokenizer, choose_dtype("fp32", SPEC))
    new_ids = tokenizer.convert_tokens_to_ids(list(SPEC.added_tokens))
    emb0 = model.get_input_embeddings().weight.detach().clone()
    head0 = model.get_output_embeddings().weight.detach().clone()
    model = apply_adapter(model, SPEC, AdapterConfig(r=4, dropout=0.0), cfg, tokenizer)
    deltas = [n for n, p in model.named_parameters() if p.requires_grad and "token_adapter" in n]
    assert len(deltas) == 2  # embed_tokens and the untied lm_head, rows only
    assert all(p.shape[0] == 3 for n, p in model.named_parameters() if "trainable_tokens_delta" in n)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([[new_ids[0], 5, 6, new_ids[1], new_ids[0], 7, new_ids[1]]])
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    merged = model.merge_and_unload()
    emb, head = merged.get_input_embeddings().weight, merged.get_output_embeddings().weight
    old = [i for i in range(emb0.shape[0]) if i not in new_ids]
    for i in new_ids[:2]:  # the pad row gets no gradient through the loss; the ChatML rows must move
        assert not torch.equal(emb[i], emb0[i]) and not torch.equal(head[i], head0[i])
    assert torch.equal(emb[old], emb0[old]) and torch.equal(head[old], head0[old])


def test_fp16_refused_with_reason():
    with pytest.raises(ConfigError, match="NaN"):
        choose_dtype("fp16", SPEC)
    proc = cli_here("check", "model.name=tiny-phi2", "model.dtype=fp16", check=False)
    assert proc.returncode == 2
    assert "fp16 is refused for phi2" in proc.stdout and "bf16 or fp32" in proc.stdout
