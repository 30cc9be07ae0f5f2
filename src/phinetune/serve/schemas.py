"""Request bodies of the OpenAI-compatible API, strict: an unknown field or an out-of-range value is a 400,
never silently ignored (a client sending `logprobs` or `n=3` must learn that this server does not do it).
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP = 4  # as OpenAI
MAX_PROMPTS = 16  # prompts in one /v1/completions request


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str = Field("{}", description="The call's arguments as a JSON string (OpenAI's format).")


class ToolCall(_Strict):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDef(_Strict):
    name: str
    description: Optional[str] = None
    parameters: Optional[dict] = None
    strict: Optional[bool] = None


class ToolDef(_Strict):
    type: Literal["function"]
    function: FunctionDef


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: Optional[Union[str, list[TextPart]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = Field(None, description="Calls an assistant turn made (tool calling, Phi-4-mini).")
    tool_call_id: Optional[str] = Field(None, description="On a tool turn: the call it answers.")
    reasoning_content: Optional[str] = Field(None, description="An assistant turn's reasoning trace, as this server returns it.")

    @model_validator(mode="after")
    def _content_or_calls(self) -> "ChatMessage":
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content (only an assistant message with tool_calls may omit it)")
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


class _Sampling(_Strict):
    model: Optional[str] = Field(None, description="Must name the served model when given.")
    max_tokens: Optional[int] = Field(None, ge=1, description="Most tokens to generate; capped by the server's --max-tokens.")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="Extension (vLLM-style): top-k sampling, 0 = off.")
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: Literal[1] = Field(1, description="Only one choice per request is generated.")
    user: Optional[str] = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ValueError(f"stop must be a non-empty string or a list of at most {MAX_STOP} non-empty strings")
        return stops

    def stops(self) -> list[str]:
        return list(self.stop or [])


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=256)
    max_completion_tokens: Optional[int] = Field(None, ge=1, description="Newer name of max_tokens.")
    tools: Optional[list[ToolDef]] = Field(None, max_length=128, description="Functions the model may call (models with a tool format: Phi-4-mini).")
    tool_choice: Optional[Literal["none", "auto"]] = Field(None, description="auto (default with tools) or none; forcing a call is not supported.")
    parallel_tool_calls: Optional[bool] = None

    def tool_defs(self) -> Optional[list[dict]]:
        if not self.tools or self.tool_choice == "none":
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, value):
        if value[-1].role == "assistant":
            raise ValueError("the last message must be from the user or the system, not the assistant")
        return value

    def requested_tokens(self) -> Optional[int]:
        return self.max_completion_tokens or self.max_tokens

    default_tokens: ClassVar[Optional[int]] = None  # chat: up to the server's cap


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]] = Field(..., description="A prompt or a list of at most 16 prompts.")
    max_tokens: Optional[int] = Field(None, ge=1, description="Default 16, as OpenAI's completions.")
    echo: Literal[False] = False

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value):
        prompts = [value] if isinstance(value, str) else value
        if not 1 <= len(prompts) <= MAX_PROMPTS:
            raise ValueError(f"prompt must be a string or a list of 1 to {MAX_PROMPTS} strings")
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def requested_tokens(self) -> Optional[int]:
        return self.max_tokens

    default_tokens: ClassVar[Optional[int]] = 16
