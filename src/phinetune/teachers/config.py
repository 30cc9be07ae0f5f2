"""A teacher's settings (synth's `teacher:` section, judge's --judge-* flags) and what one request asks of it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TeacherConfig(_Strict):
    kind: Literal["openai", "local"] = Field(
        "openai",
        description="openai: any OpenAI-compatible chat-completions endpoint (vLLM, Ollama, llama.cpp, OpenAI); local: a Hugging Face model run in-process.",
    )
    model: str = Field(
        ...,
        description="Model name at the endpoint (openai), or a run folder, merged folder, model id or tiny-* name (local).",
    )
    base_url: str | None = Field(
        None,
        description="Endpoint base URL ending in /v1; default: $PHINETUNE_TEACHER_BASE_URL, $OPENAI_BASE_URL, else https://api.openai.com/v1.",
    )
    api_key: str | None = Field(None, description="API key; prefer api_key_env so keys stay out of config files.")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key (used when api_key is not set)."
    )
    system: str | None = Field(None, description="Optional system prompt sent with every teacher call.")
    concurrency: int = Field(8, ge=1, le=256, description="Most requests in flight at once (openai).")
    max_retries: int = Field(
        6,
        ge=0,
        description="Retries per call on 408/409/429, 5xx, timeouts and connection errors: the openai SDK's "
        "exponential backoff with jitter (0.5 s doubling, at most 8 s), or what a Retry-After header asks.",
    )
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout in seconds.")
    price_input_per_1m: float = Field(
        0.0,
        ge=0,
        description="USD per million prompt tokens, for the cost counter (0: not counted unless the endpoint reports usage.cost).",
    )
    price_output_per_1m: float = Field(0.0, ge=0, description="USD per million completion tokens.")
    batch_size: int = Field(8, ge=1, description="Conversations per generate() batch (local).")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="Weights dtype (local).")
    quant: Literal["none", "nf4"] = Field("none", description="nf4 loads the local teacher in 4-bit.")


class RequestSampling(_Strict):
    """What a chat-completions request asks the teacher for (OpenAI's names: `max_tokens`); the local teacher
    turns it into phinetune.infer.complete.Sampling (transformers' names: `max_new_tokens`)."""

    max_tokens: int = Field(500, ge=1, description="Most tokens per teacher answer.")
    temperature: float = Field(0.7, ge=0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
