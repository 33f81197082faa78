"""The ASGI app: OpenAI's chat-completions API, video uploads, health and the web page.

Handlers validate and resolve a request, queue it for the worker
(``engine.py``) and relay the worker's events: one JSON object, or
server-sent events in OpenAI's chunk format. A client that goes away
cancels its turn. Every refusal is a 4xx JSON body in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import openai_format as fmt
from .api_error import ApiError, bad_request
from .engine import Engine, Event, Job, TurnResult
from .media import MediaStore
from .schemas import ChatRequest, parse_chat_request
from .settings import ServeSettings

LOG = logging.getLogger("crosslmm_edge.serve")
DISCONNECT_POLL_S = 0.5  # how often a waiting non-streamed request checks its client
PAGE = Path(__file__).parent / "static" / "index.html"


class ServeApp:
    """The routes over one engine and media store."""

    def __init__(self, engine: Engine, media: MediaStore, settings: ServeSettings) -> None:
        self.engine, self.media, self.settings = engine, media, settings
        self.page = PAGE.read_text(encoding="utf-8")

    def starlette(self) -> Starlette:
        """The ASGI application (the engine starts and stops with it)."""
        routes = [
            Route("/", self.index),
            Route("/health", self.health),
            Route("/v1/models", self.models),
            Route("/v1/videos", self.upload, methods=["POST"]),
            Route("/v1/videos", self.videos, methods=["GET"]),
            Route("/v1/videos/{video_id}", self.delete_video, methods=["DELETE"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
        ]
        handlers = {ApiError: api_error, HTTPException: http_error, Exception: server_error}
        return Starlette(routes=routes, exception_handlers=handlers, lifespan=self.lifespan)

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.engine.start()
        try:
            yield
        finally:
            await run_in_threadpool(self.engine.stop)
            self.media.close()

    # -- plain routes -----------------------------------------------------
    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.page)

    async def health(self, request: Request) -> Response:
        ok = self.engine.alive
        body = {"status": "ok" if ok else "worker stopped", **self.engine.status()}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def models(self, request: Request) -> Response:
        self.authorize(request)
        assistant = self.engine.assistant
        model = {
            "id": self.settings.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "crosslmm-edge",
            "max_model_len": assistant.max_context,
            "max_frames": assistant.pipeline.package.max_frames,
            "artifacts": assistant.artifact_label,
        }
        return JSONResponse({"object": "list", "data": [model]})

    async def videos(self, request: Request) -> Response:
        self.authorize(request)
        uploads = [
            {"id": vid, "object": "video", "bytes": size} for vid, size in self.media.uploads()
        ]
        media = await run_in_threadpool(self.media.media_files)
        return JSONResponse(
            {"object": "list", "data": uploads, "media": media, "live": self.media.has_live}
        )

    async def upload(self, request: Request) -> Response:
        """Store the raw request body as a video; its id is derived from its sha256."""
        self.authorize(request)
        data = await read_body(request, self.settings.max_video_bytes)
        ref = await run_in_threadpool(self.media.store_chunks, [data])
        body = {"id": ref.video_id, "object": "video", "bytes": len(data), "sha256": ref.sha256}
        return JSONResponse(body, status_code=201)

    async def delete_video(self, request: Request) -> Response:
        self.authorize(request)
        video_id = request.path_params["video_id"]
        self.media.delete(video_id)
        return JSONResponse({"id": video_id, "object": "video", "deleted": True})

    # -- chat -------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        self.authorize(request)
        body = parse_json(await read_body(request, self.settings.max_body_bytes))
        chat = parse_chat_request(body, self.settings)
        # Naming a known video is a lookup; reading one (hash, probe, store) leaves the loop.
        video = self.media.resolve(chat.video_url, read=False)
        if video is None:
            video = await run_in_threadpool(self.media.resolve, chat.video_url)
        assert video is not None
        loop, events = asyncio.get_running_loop(), asyncio.Queue[Event]()

        def send(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening
                loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(chat, video, send)
        self.engine.submit(job)
        if chat.stream:
            return await self.stream(request, chat, job, events)
        result = await self.wait_for(request, job, events, ("done",))
        assert isinstance(result, TurnResult)
        cid, decode = fmt.completion_id(), self.engine.assistant.prompt.decode
        logprobs = fmt.logprobs_block(result, decode)
        body = fmt.completion(cid, self.settings.model_name, result, video.video_id, logprobs)
        return JSONResponse(body, headers=video_headers(result.video_reused, video.video_id))

    async def wait_for(
        self, request: Request, job: Job, events: asyncio.Queue[Event], kinds: tuple[str, ...]
    ) -> object:
        """The value of the first event of ``kinds``; an error event is raised."""
        while True:
            try:
                kind, value = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                if not self.engine.alive:
                    raise ApiError(500, "the worker has stopped; restart the server") from None
                if await request.is_disconnected():
                    job.cancelled.set()
                    raise ApiError(499, "the client closed the connection") from None
                continue
            if kind == "error":
                assert isinstance(value, ApiError)
                raise value
            if kind in kinds:
                return value

    async def stream(
        self, request: Request, chat: ChatRequest, job: Job, events: asyncio.Queue[Event]
    ) -> Response:
        """Server-sent events; headers go once the video is ready (they say if it was reused).

        The first chunk (OpenAI's ``role: "assistant"`` delta with empty content)
        goes out as soon as the first token is sampled, even when that token
        decodes to no text yet; its ``x_crosslmm.first_token_id`` names it.
        """
        info = await self.wait_for(request, job, events, ("start",))
        assert isinstance(info, dict)
        cid, model = fmt.completion_id(), self.settings.model_name

        async def chunks() -> AsyncIterator[bytes]:
            opened = False  # whether the first chunk (role, first token id) went out
            try:
                while True:
                    kind, value = await events.get()
                    if kind == "error":
                        assert isinstance(value, ApiError)
                        yield fmt.sse(value.body())
                        break
                    if not opened:  # the first token was sampled, whatever its text
                        opened = True
                        token = value if kind == "token" else None
                        assert token is None or isinstance(token, int)
                        yield fmt.sse(fmt.first_chunk(cid, model, token))
                    if kind == "delta":
                        yield fmt.sse(fmt.chunk(cid, model, {"content": value}))
                    elif kind == "done":
                        assert isinstance(value, TurnResult)
                        for event in self.final_chunks(cid, model, value, chat, info["video_id"]):
                            yield event
                        break
                yield fmt.sse("[DONE]")
            finally:
                job.cancelled.set()  # stops the turn when the client went away mid-stream

        headers = video_headers(info["video_reused"], info["video_id"])
        headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return StreamingResponse(chunks(), media_type="text/event-stream", headers=headers)

    def authorize(self, request: Request) -> None:
        """With ``--api-key``, every /v1 route needs ``Authorization: Bearer KEY``."""
        key = self.settings.api_key
        if not key:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key (send 'Authorization: Bearer KEY')",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def final_chunks(
        self, cid: str, model: str, result: TurnResult, chat: ChatRequest, video_id: str
    ) -> list[bytes]:
        """The finishing chunk (with the answer's logprobs) and the usage chunk if asked."""
        logprobs = fmt.logprobs_block(result, self.engine.assistant.prompt.decode)
        last = fmt.chunk(cid, model, {}, result.finish_reason, logprobs)
        last["x_crosslmm"] = fmt.extras(result, video_id)
        events = [fmt.sse(last)]
        if chat.include_usage:
            usage = {**fmt.chunk(cid, model, {}), "choices": [], "usage": fmt.usage(result)}
            events.append(fmt.sse(usage))
        return events


def video_headers(reused: bool, video_id: str) -> dict[str, str]:
    """Response headers that say which video answered and whether it was reused."""
    return {"X-Video-Reused": "true" if reused else "false", "X-Video-Id": video_id}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes before it is all read."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413, f"the request body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(data: bytes) -> object:
    """The parsed body, or 400."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"the body is not valid JSON: {str(exc)[:200]}") from None


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = ApiError(exc.status_code, str(exc.detail))
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    LOG.error("request failed", exc_info=exc)
    return JSONResponse(ApiError(500, "internal server error").body(), status_code=500)
