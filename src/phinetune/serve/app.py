"""The OpenAI-compatible HTTP API: /v1/chat/completions (with SSE streaming), /v1/completions, /v1/models, /health, /metrics.

Every client mistake is a 4xx with an OpenAI-style error body ({"error": {"message", "type", "param", "code"}}):
bad JSON, unknown fields, out-of-range values, a body over the size limit, max_tokens over the server cap,
an empty prompt or one that tokenizes to nothing, a prompt too long for the context, a wrong API key, an
unknown model, a full queue (429). A request that takes longer than --request-timeout is a 504.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from phinetune import __version__
from phinetune.infer.complete import Completion, Sampling, chat_prompt
from phinetune.runs.loading import Loaded
from phinetune.serve.adapters import Served, default_model_name
from phinetune.serve.limits import BodySizeLimit
from phinetune.serve.observe import AccessLog, Metrics
from phinetune.serve.responses import TEXT, TextFormat, usage
from phinetune.serve.schemas import ChatCompletionRequest, CompletionRequest
from phinetune.serve.settings import ServeSettings
from phinetune.serve.stream import SSE_DONE, StopFilter, sse
from phinetune.serve.tools import ReplyFormat, ToolRequestError, request_messages
from phinetune.serve.worker import Job, Output, QueueFull, Refused, Worker

log = logging.getLogger("phinetune.serve")


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_body(status: int, message: str, type: str = "invalid_request_error", param=None, code=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status_code=status)


_UNION_TAGS = {
    "str",
    "int",
    "float",
    "bool",
    "list",
    "dict",
    "none",
}  # pydantic names the union member it tried in `loc`


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One clear sentence for the first problem, naming the field."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body" and "[" not in str(p) and str(p) not in _UNION_TAGS]
    field_ = ".".join(loc) or None
    kind, msg = err.get("type", ""), str(err.get("msg")).removeprefix("Value error, ")
    if kind == "json_invalid":
        return f"request body is not valid JSON ({err.get('ctx', {}).get('error', msg)})", None
    if kind == "extra_forbidden":
        return (
            f"unknown field '{field_}': this server does not support it (see GET /docs for the accepted fields)",
            field_,
        )
    if kind == "missing":
        return f"missing required field '{field_}'", field_
    if kind == "value_error" and not loc:  # a check across fields (schemas.py's model validators)
        return msg, None
    if (
        kind == "value_error" and field_ and msg.startswith(field_.split(".")[-1])
    ):  # the sentence names the field itself
        return msg, field_
    if not loc:
        return f"request body must be a JSON object ({msg})", None
    return f"invalid value for '{field_}': {msg} (got {str(err.get('input'))[:80]!r})", field_


def create_app(served: Served | Loaded, settings: ServeSettings) -> FastAPI:
    """Serve `served` (several models on one base) or one loaded model, named settings.model_name."""
    if isinstance(served, Loaded):
        served = Served.single(served, settings.model_name or default_model_name(served.source))
    loaded = served.loaded
    context = getattr(loaded.model.config, "max_position_embeddings", None)
    worker = Worker(loaded, settings.max_queue, settings.max_batch, context)
    metrics = Metrics(lambda: worker.queued, lambda: worker.busy)
    worker.on_batch = lambda jobs, outputs: metrics.batch.observe(len(outputs))
    app = FastAPI(title="phinetune", version=__version__)
    app.state.worker, app.state.settings, app.state.metrics, app.state.served = worker, settings, metrics, served
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )
    app.add_middleware(AccessLog, metrics=metrics)  # outermost: counts every answer
    app.router.add_event_handler("shutdown", worker.stop)
    _add_error_handlers(app)
    auth = _auth_dependency(settings.api_key)
    api = _Api(served, settings, worker, metrics)

    @app.get("/health")
    async def health():
        body = {
            "status": "ok" if worker.alive else "worker stopped",
            "model": served.default,
            "models": list(served.models),
            "queued": worker.queued,
            "served": worker.served,
        }
        return JSONResponse(body, status_code=200 if worker.alive else 503)

    @app.get("/metrics")
    async def prometheus():
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models():
        return {"object": "list", "data": [api.card(name) for name in served.models]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(auth)])
    async def model(model_id: str):
        api.adapter(model_id)
        return api.card(model_id)

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        name, adapter = api.resolve(req.model)
        tools, spec = req.tool_defs(), loaded.spec
        if tools and req.stream:
            raise APIError(
                400,
                "stream=true with tools is not supported: tool calls are parsed from the finished reply; "
                "send stream=false",
                param="stream",
            )
        try:  # tools, tool calls and reasoning written as the model was trained to see them (serve/tools.py)
            messages = request_messages([m.template_dict() for m in req.messages], tools, spec)
        except ToolRequestError as exc:
            raise APIError(400, str(exc), param=exc.param) from None
        if req.wants_json() and not any("json" in m["content"].lower() for m in messages):
            raise APIError(
                400,
                "response_format json_object needs the word 'JSON' in the messages (as OpenAI requires): "
                "tell the model to answer in JSON",
                param="messages",
            )
        job = Job(
            [api.render(messages)] * req.n,
            api.sampling(req),
            req.stops(),
            adapter=adapter,
            logprobs=req.top_k_logprobs(),
            param="messages",
        )
        api.note(request, name, req, messages)
        return await api.respond(job, req, name, ReplyFormat(spec, settings.reasoning, bool(tools)), request)

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(req: CompletionRequest, request: Request):
        name, adapter = api.resolve(req.model)
        prompts = [p for p in req.prompts() for _ in range(req.n)]
        job = Job(
            prompts,
            api.sampling(req),
            req.stops(),
            adapter=adapter,
            logprobs=req.logprobs,
            echo=req.echo,
            generate=req.max_tokens != 0,
        )
        api.note(request, name, req, req.prompts())
        return await api.respond(job, req, name, TEXT, request)

    return app


class _Api:
    """What the endpoints share: model ids, sampling settings, submitting a job and answering, streamed or not."""

    def __init__(self, served: Served, settings: ServeSettings, worker: Worker, metrics: Metrics):
        self.served, self.settings, self.worker, self.metrics = served, settings, worker, metrics

    def card(self, name: str) -> dict:
        return {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "phinetune",
            "parent": None if self.served.models.get(name) is None else self.base_name,
        }

    @property
    def base_name(self) -> str | None:
        return next((n for n, a in self.served.models.items() if a is None), None)

    def adapter(self, requested: str) -> str | None:
        if requested not in self.served.models:
            raise APIError(
                404,
                f"model '{requested}' is not served here; this server serves: {', '.join(self.served.models)}",
                param="model",
                code="model_not_found",
            )
        return self.served.models[requested]

    def resolve(self, requested: str | None) -> tuple[str, str | None]:
        name = requested or self.served.default
        return name, self.adapter(name)

    def render(self, messages: list[dict]) -> str:
        try:
            return chat_prompt(self.served.loaded, messages)
        except Exception as exc:  # a template's raise_exception (e.g. no system role): the client's messages, not us
            raise APIError(400, f"the model's chat template refuses these messages: {exc}", param="messages") from None

    def sampling(self, req) -> Sampling:
        return _sampling(req, self.settings)

    def note(self, request: Request, name: str, req, prompts) -> None:
        entry = request.scope.get("state", {}).get("access")
        if entry is not None:
            entry |= {"model": name, "stream": req.stream, "n": req.n}
            if self.settings.log_prompts:
                entry["prompt"] = prompts

    def account(self, request: Request, name: str, counts: dict) -> None:
        self.metrics.count_tokens(name, counts)
        entry = request.scope.get("state", {}).get("access")
        if entry is not None:
            entry |= {"prompt_tokens": counts["prompt_tokens"], "completion_tokens": counts["completion_tokens"]}

    def submit(self, job: Job):
        try:
            return self.worker.submit(job)
        except QueueFull as exc:
            raise APIError(429, str(exc), type="rate_limit_error", code="queue_full") from None

    async def respond(self, job: Job, req, name: str, fmt: TextFormat, request: Request):
        deadline = time.monotonic() + self.settings.request_timeout
        if req.stream:
            queue: asyncio.Queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            job.on_text = lambda text: loop.call_soon_threadsafe(queue.put_nowait, text)
            job.future.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))  # end of stream
            self.submit(job)  # before the response starts, so a full queue is still a clean 429
            await self.wait(job, job.admitted, deadline)  # and a refused prompt a clean 400
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                self.stream(job, queue, name, fmt, include_usage, deadline, request),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        outputs = await self.wait(job, self.submit(job), deadline)
        if isinstance(req, ChatCompletionRequest) and req.wants_json():
            _check_json(outputs)
        body = fmt.response(outputs, name, req.n)
        self.account(request, name, body["usage"])
        return body

    async def wait(self, job: Job, future, deadline: float) -> list[Output]:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), max(deadline - time.monotonic(), 0.001))
        except Refused as exc:
            raise APIError(400, str(exc), param=exc.param, code=exc.code) from None
        except asyncio.TimeoutError:
            job.cancel.set()
            raise APIError(
                504,
                f"the answer took longer than this server's limit of {self.settings.request_timeout:g} s "
                "(serve --request-timeout); lower max_tokens or retry",
                type="timeout_error",
                code="timeout",
            ) from None
        except asyncio.CancelledError:
            job.cancel.set()
            raise

    async def stream(
        self,
        job: Job,
        queue: asyncio.Queue,
        name: str,
        fmt: TextFormat,
        include_usage: bool,
        deadline: float,
        request: Request,
    ) -> AsyncIterator[str]:
        ident, stops, started = fmt.new_id(), StopFilter(job.stop), time.monotonic()
        try:
            if (opening := fmt.opening()) is not None:
                yield sse(fmt.chunk(ident, name, [opening]))
            first = True
            while True:
                try:
                    piece = await asyncio.wait_for(queue.get(), max(deadline - time.monotonic(), 0.001))
                except asyncio.TimeoutError:
                    yield sse(
                        _error_event(
                            f"the answer took longer than this server's limit of {self.settings.request_timeout:g} s",
                            "timeout_error",
                        )
                    )
                    return
                if piece is None:
                    break
                if first:
                    self.metrics.first_token.observe(time.monotonic() - started)
                    first = False
                if text := stops.feed(piece):
                    yield sse(fmt.chunk(ident, name, [fmt.delta(text, None)]))
            try:
                outputs = job.future.result()
            except Refused as exc:  # headers are sent: the error can only travel inside the stream
                yield sse(_error_event(str(exc), "invalid_request_error", exc.param, exc.code))
                return
            except Exception as exc:
                log.exception("generation failed during a stream")
                yield sse(_error_event(f"generation failed: {exc}", "server_error"))
                return
            if tail := stops.flush():
                yield sse(fmt.chunk(ident, name, [fmt.delta(tail, None)]))
            result = outputs[0].completion if outputs else Completion("", 0, 0, "stop")
            yield sse(fmt.chunk(ident, name, [fmt.delta(None, "stop" if stops.stopped else result.finish_reason)]))
            counts = usage(outputs)
            self.account(request, name, counts)
            if include_usage:
                yield sse(fmt.chunk(ident, name, [], usage=counts))
            yield SSE_DONE
        finally:
            job.cancel.set()  # a client that went away stops the generation at the next token


def _sampling(req, settings: ServeSettings) -> Sampling:
    wanted, cap = req.requested_tokens(), settings.max_tokens
    if wanted is not None and wanted > cap:
        raise APIError(
            400, f"max_tokens={wanted} is over this server's limit of {cap} (serve --max-tokens)", param="max_tokens"
        )
    default = min(req.default_tokens or cap, cap)
    return Sampling(
        wanted or default, req.temperature, req.top_k, req.top_p, req.seed
    )  # max_tokens=0 scores only: never generates


def _error_event(message: str, type: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _check_json(outputs: list[Output]) -> None:
    """response_format json_object is validated, not constrained: a reply that is not a JSON object is refused
    with the reply attached, as Groq's API does (code json_validate_failed), so the client can retry or repair it."""
    for i, out in enumerate(outputs):
        try:
            ok = isinstance(json.loads(out.completion.text), dict)
        except ValueError:
            ok = False
        if not ok:
            raise APIError(
                400,
                f"the model's reply (choice {i}) is not a JSON object; response_format json_object is validated, "
                f"not constrained: retry, or ask for JSON more plainly. Reply: {out.completion.text[:200]!r}",
                param="response_format",
                code="json_validate_failed",
            )


def _auth_dependency(api_key: str | None):
    async def check(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                type="authentication_error",
                code="invalid_api_key",
            )

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
        return error_body(
            exc.status_code,
            str(exc.detail),
            type="not_found_error" if exc.status_code == 404 else "invalid_request_error",
        )

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        log.exception("unhandled error")
        return error_body(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
