"""vLLM loads the merged folder and answers like PyTorch.

vLLM needs a CUDA GPU (its CPU build is not on PyPI), so this skips on the CPU machines the suite runs on.
No module splitting is needed: vLLM's Phi3ForCausalLM keeps the fused qkv_proj/gate_up_proj and maps LoRA
onto them as packed modules, the same names phinetune trains. The tiny runs train embed_tokens/lm_head
in full (modules_to_save), which vLLM's LoRA loader refuses, so they are served merged; see docs/export.md.
"""

import pytest


@pytest.mark.slow
def test_vllm_serves_the_merged_model(memorized_run, tmp_path):
    vllm = pytest.importorskip("vllm", reason="vLLM is not installed (it needs a CUDA GPU; pip install vllm there)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    from phinetune.export.merge import merge_run
    from test_export_gguf import Reference

    run = memorized_run("tiny-phi3")
    ref = Reference(merge_run(str(run), str(tmp_path / "merged"), dtype="fp32"))
    params = vllm.SamplingParams(temperature=0.0, max_tokens=48, stop_token_ids=ref.stop_ids)
    prompts = [{"prompt_token_ids": ref.ids(p)} for p in ref.prompts]
    expected = [ref.tokenizer.decode(ref.greedy(p["prompt_token_ids"]), skip_special_tokens=True) for p in prompts]
    merged = vllm.LLM(model=str(ref.dir), dtype="float32", enforce_eager=True)
    assert [o.outputs[0].text for o in merged.generate(prompts, params)] == expected
