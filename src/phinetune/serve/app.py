"""The OpenAI-compatible HTTP API: /v1/chat/completions (with SSE streaming), /v1/completions, /v1/models, /health.

Every client mistake is a 4xx with an OpenAI-style error body ({"error": {"message", "type", "param", "code"}}):
bad JSON, unknown fields, out-of-range values, a body over the size limit, max_tokens over the server cap,
a prompt too long for the context, a wrong API key, a full queue (429).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import AsyncIterator, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from phinetune import __version__
from phinetune.infer.complete import Completion, Sampling, chat_prompt
from phinetune.runs.loading import Loaded
from phinetune.serve.limits import BodySizeLimit
from phinetune.serve.responses import TEXT, TextFormat, usage
from phinetune.serve.schemas import ChatCompletionRequest, CompletionRequest
from phinetune.serve.stream import SSE_DONE, StopFilter, sse
from phinetune.serve.tools import ReplyFormat, ToolRequestError, request_messages
from phinetune.serve.worker import Job, PromptTooLong, QueueFull, Worker

log = logging.getLogger("phinetune.serve")


@dataclass
class ServeSettings:
    model_name: str
    api_key: Optional[str] = None
    max_tokens: int = 512  # cap on max_tokens of one request; also the default for chat
    max_body_bytes: int = 1 << 20
    max_queue: int = 64
    max_batch: int = 8
    reasoning: str = "separate"  # a reply's <think> trace: reasoning_content (separate), dropped (hide) or left inline


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_body(status: int, message: str, type: str = "invalid_request_error", param=None, code=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status_code=status)


def validation_message(exc: RequestValidationError) -> tuple[str, Optional[str]]:
    """One clear sentence for the first problem, naming the field."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    field = ".".join(loc) or None
    kind = err.get("type", "")
    if kind == "json_invalid":
        return f"request body is not valid JSON ({err.get('ctx', {}).get('error', err.get('msg'))})", None
    if kind == "extra_forbidden":
        return f"unknown field '{field}': this server does not support it (see GET /docs for the accepted fields)", field
    if kind == "missing":
        return f"missing required field '{field}'", field
    if not loc:
        return f"request body must be a JSON object ({err.get('msg')})", None
    return f"invalid value for '{field}': {err.get('msg')} (got {str(err.get('input'))[:80]!r})", field


def create_app(loaded: Loaded, settings: ServeSettings) -> FastAPI:
    context = getattr(loaded.model.config, "max_position_embeddings", None)
    worker = Worker(loaded, settings.max_queue, settings.max_batch, context)
    app = FastAPI(title="phinetune", version=__version__)
    app.state.worker, app.state.settings = worker, settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.router.add_event_handler("shutdown", worker.stop)
    _add_error_handlers(app)
    auth = _auth_dependency(settings.api_key)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "queued": worker.queued, "served": worker.served}

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models():
        return {"object": "list", "data": [_model_card(settings.model_name)]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(auth)])
    async def model(model_id: str):
        _check_model(model_id, settings)
        return _model_card(settings.model_name)

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat_completions(req: ChatCompletionRequest):
        _check_model(req.model, settings)
        tools = req.tool_defs()
        if tools and req.stream:
            raise APIError(400, "stream=true with tools is not supported: tool calls are parsed from the finished reply; "
                                "send stream=false", param="stream")
        try:
            messages = request_messages([m.template_dict() for m in req.messages], tools, loaded.spec)
        except ToolRequestError as exc:
            raise APIError(400, str(exc), param=exc.param) from None
        job = Job([chat_prompt(loaded, messages)], _sampling(req, settings), req.stops())
        return await _respond(worker, job, req, settings, ReplyFormat(loaded.spec, settings.reasoning, bool(tools)))

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(req: CompletionRequest):
        _check_model(req.model, settings)
        if req.stream and len(req.prompts()) > 1:
            raise APIError(400, "stream=true supports a single prompt; send one request per prompt", param="prompt")
        job = Job(req.prompts(), _sampling(req, settings), req.stops())
        return await _respond(worker, job, req, settings, TEXT)

    return app


def _model_card(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "phinetune"}


def _check_model(requested: Optional[str], settings: ServeSettings) -> None:
    if requested and requested != settings.model_name:
        raise APIError(404, f"model '{requested}' is not served here; this server serves '{settings.model_name}'",
                       param="model", code="model_not_found")


def _sampling(req, settings: ServeSettings) -> Sampling:
    wanted = req.requested_tokens()
    if wanted is not None and wanted > settings.max_tokens:
        raise APIError(400, f"max_tokens={wanted} is over this server's limit of {settings.max_tokens} (serve --max-tokens)", param="max_tokens")
    default = min(req.default_tokens or settings.max_tokens, settings.max_tokens)
    return Sampling(wanted or default, req.temperature, req.top_k, req.top_p, req.seed)


async def _respond(worker: Worker, job: Job, req, settings: ServeSettings, fmt: TextFormat):
    if req.stream:
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        job.on_text = lambda text: loop.call_soon_threadsafe(queue.put_nowait, text)
        job.future.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))  # end of stream
        _submit(worker, job)  # before the response starts, so a full queue is still a clean 429
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_stream(job, queue, settings.model_name, fmt, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    results = await _wait(job, _submit(worker, job))
    return fmt.response(results, settings.model_name)


def _submit(worker: Worker, job: Job):
    try:
        return worker.submit(job)
    except QueueFull as exc:
        raise APIError(429, str(exc), type="rate_limit_error", code="queue_full") from None


async def _wait(job: Job, future) -> list[Completion]:
    try:
        return await asyncio.wrap_future(future)
    except PromptTooLong as exc:
        raise APIError(400, str(exc), param="messages", code="context_length_exceeded") from None
    except asyncio.CancelledError:
        job.cancel.set()
        raise


async def _stream(job: Job, queue: asyncio.Queue, model: str, fmt: TextFormat, include_usage: bool) -> AsyncIterator[str]:
    ident = fmt.new_id()
    stops = StopFilter(job.stop)
    try:
        if (opening := fmt.opening()) is not None:
            yield sse(fmt.chunk(ident, model, [opening]))
        while (piece := await queue.get()) is not None:
            text = stops.feed(piece)
            if text:
                yield sse(fmt.chunk(ident, model, [fmt.delta(text, None)]))
        try:
            results = job.future.result()
        except Exception as exc:  # headers are sent: the error can only travel inside the stream
            log.exception("generation failed during a stream")
            yield sse({"error": {"message": f"generation failed: {exc}", "type": "server_error", "param": None, "code": None}})
            return
        tail = stops.flush()
        if tail:
            yield sse(fmt.chunk(ident, model, [fmt.delta(tail, None)]))
        result = results[0] if results else Completion("", 0, 0, "stop")
        yield sse(fmt.chunk(ident, model, [fmt.delta(None, "stop" if stops.stopped else result.finish_reason)]))
        if include_usage:
            yield sse(fmt.chunk(ident, model, [], usage=usage(results)))
        yield SSE_DONE
    finally:
        job.cancel.set()  # a client that went away stops the generation at the next token


def _auth_dependency(api_key: Optional[str]):
    async def check(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", type="authentication_error",
                           code="invalid_api_key")
    return check


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return error_body(exc.status, exc.message, exc.type, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc)
        return error_body(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_body(exc.status_code, str(exc.detail), type="not_found_error" if exc.status_code == 404 else "invalid_request_error")

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        log.exception("unhandled error")
        return error_body(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
