"""Request bodies of the OpenAI-compatible API, strict: an unknown field or an out-of-range value is a 400,
never silently ignored (a client sending a field this server does not implement must learn that it does not).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

MAX_STOP = 4  # as OpenAI
MAX_PROMPTS = 16  # prompts in one /v1/completions request
MAX_CHOICES = 16  # prompts x n in one request
MAX_TOP_LOGPROBS = 20  # as OpenAI's chat API (completions allows 5; vLLM allows 20 in both, and so do we)


def _encodable(text: str) -> str:
    """JSON can carry lone surrogates (\\ud800) that are no text at all: the tokenizer would fail on them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"not valid Unicode text: a lone surrogate {text[exc.start : exc.end]!r} at character {exc.start}"
        ) from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


class FunctionCall(_Strict):
    name: str
    arguments: str = Field("{}", description="The call's arguments as a JSON string (OpenAI's format).")


class ToolCall(_Strict):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDef(_Strict):
    name: str
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class ToolDef(_Strict):
    type: Literal["function"]
    function: FunctionDef


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None
    tool_calls: list[ToolCall] | None = Field(
        None, description="Calls an assistant turn made (tool calling, Phi-4-mini)."
    )
    tool_call_id: str | None = Field(None, description="On a tool turn: the call it answers.")
    reasoning_content: str | None = Field(
        None, description="An assistant turn's reasoning trace, as this server returns it."
    )

    @model_validator(mode="after")
    def _content_or_calls(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(
                f"a {self.role} message needs content (only an assistant message with tool_calls may omit it)"
            )
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def template_dict(self) -> dict:
        """The message for serve/tools.request_messages: text content plus the tool and reasoning fields."""
        out = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.reasoning_content:
            out["reasoning_content"] = self.reasoning_content
        return out


class StreamOptions(_Strict):
    include_usage: bool = False


class ResponseFormat(_Strict):
    type: Literal["text", "json_object"] = Field(
        ...,
        description="json_object: the reply is validated as a JSON object "
        "(not constrained): a reply that is not one is a 400 json_validate_failed.",
    )


def _no_penalty(value: float | None, info) -> float | None:
    if value:
        raise ValueError(
            f"{info.field_name} {value:g} is not supported: this server applies no {info.field_name.replace('_', ' ')}; "
            "send 0 or leave it out"
        )
    return value


def _no_bias(value: dict | None, info) -> dict | None:
    if value and any(v != 0 for v in value.values()):
        raise ValueError("logit_bias is not supported: this server does not bias tokens; send {} or leave it out")
    return value


# Fields many clients send with their neutral value on every request (LangChain, LiteLLM, chat front ends): accepted
# as that value, which samples exactly as leaving them out does; any other value changes sampling in a way this
# server does not implement, so it is a 400 rather than silently ignored. The schema (GET /docs, and the bodies the
# tests generate from it) says so: only the neutral value.
Penalty = Annotated[
    float | None,
    AfterValidator(_no_penalty),
    WithJsonSchema({"anyOf": [{"const": 0}, {"type": "null"}], "description": "Accepted only as 0 (no penalty)."}),
]
LogitBias = Annotated[
    dict[str, float] | None,
    AfterValidator(_no_bias),
    WithJsonSchema(
        {
            "anyOf": [{"type": "object", "maxProperties": 0}, {"type": "null"}],
            "description": "Accepted only without a bias: {} (or every bias 0).",
        }
    ),
]


class _Sampling(_Strict):
    model: str | None = Field(
        None, description="One of the ids GET /v1/models lists (an adapter or the base); default: the first."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Most tokens to generate; capped by the server's --max-tokens."
    )
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="Extension (vLLM-style): top-k sampling, 0 = off.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Same seed, same request: same sampled answer.")
    stop: Text | list[Text] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="Choices per prompt.")
    user: str | None = None
    frequency_penalty: Penalty = None
    presence_penalty: Penalty = None
    logit_bias: LogitBias = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ValueError(f"stop must be a non-empty string or a list of at most {MAX_STOP} non-empty strings")
        return stops

    @model_validator(mode="after")
    def _stream_alone(self):
        if self.stream and self.n > 1:
            raise ValueError("stream=true supports n=1 only; send one request per choice")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream=true")
        return self

    def stops(self) -> list[str]:
        return list(self.stop or [])


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1, description="Newer name of max_tokens.")
    logprobs: bool = Field(False, description="Return each generated token's log-probability.")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="Also the k most likely tokens at each position."
    )
    response_format: ResponseFormat | None = None
    tools: list[ToolDef] | None = Field(
        None, max_length=128, description="Functions the model may call (models with a tool format: Phi-4-mini)."
    )
    tool_choice: Literal["none", "auto"] | None = Field(
        None, description="auto (default with tools) or none; forcing a call is not supported."
    )
    parallel_tool_calls: bool | None = None

    def tool_defs(self) -> list[dict] | None:
        if not self.tools or self.tool_choice == "none":
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, value):
        if value[-1].role == "assistant":
            raise ValueError("the last message must be from the user or the system, not the assistant")
        return value

    @model_validator(mode="after")
    def _logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        if self.logprobs and self.stream:
            raise ValueError("logprobs are not streamed by this server; use stream=false")
        return self

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def top_k_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def wants_json(self) -> bool:
        return self.response_format is not None and self.response_format.type == "json_object"

    default_tokens: ClassVar[int | None] = None  # chat: up to the server's cap


TokenIds = list[int]


class CompletionRequest(_Sampling):
    prompt: Text | list[Text] | TokenIds | list[TokenIds] = Field(
        ..., description="A prompt, a list of at most 16 prompts, or the same as token ids (what lm-eval sends)."
    )
    max_tokens: int | None = Field(
        None, ge=0, description="Default 16, as OpenAI's completions; 0 (with echo) scores the prompt only."
    )
    echo: bool = Field(False, description="Return the prompt before the completion (and its tokens' logprobs).")
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="Log-probabilities of the chosen tokens and of the k most likely at each position.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value):
        prompts = [value] if isinstance(value, str) or (value and isinstance(value[0], int)) else value
        if not 1 <= len(prompts) <= MAX_PROMPTS:
            raise ValueError(f"prompt must be a string, a list of token ids, or a list of 1 to {MAX_PROMPTS} of either")
        if any(len(p) == 0 for p in prompts):
            raise ValueError(
                "an empty prompt gives the model nothing to continue; send at least one character (or token id)"
            )
        return value

    @model_validator(mode="after")
    def _scoring(self):
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens=0 generates nothing: use it with echo=true (and logprobs) to score the prompt")
        if self.stream and (self.echo or self.logprobs is not None):
            raise ValueError("echo and logprobs are not streamed by this server; use stream=false")
        if self.stream and len(self.prompts()) > 1:
            raise ValueError("stream=true supports a single prompt; send one request per prompt")
        if len(self.prompts()) * self.n > MAX_CHOICES:
            raise ValueError(f"prompts x n must be at most {MAX_CHOICES} (got {len(self.prompts())} x {self.n})")
        return self

    def prompts(self) -> list[str | TokenIds]:
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)

    def requested_tokens(self) -> int | None:
        return self.max_tokens

    default_tokens: ClassVar[int | None] = 16
