"""Build the served app from a package and settings; run it with uvicorn."""

from __future__ import annotations

from pathlib import Path

import uvicorn

from ..errors import UserError
from .app import ServeApp
from .engine import Engine
from .live_source import LiveFeed
from .media import MediaStore
from .served_assistant import ServedAssistant
from .settings import ServeSettings


def create_app(
    package: str | Path,
    settings: ServeSettings,
    provider: str | None = None,
    precision: str | None = None,
    backend: str = "onnx",
    max_context: int | None = None,
    threads: int = 0,
) -> ServeApp:
    """Open ``package`` once and wire the worker, the media store and the routes."""
    settings.check()
    folder = Path(package)
    if not (folder / "manifest.json").is_file():
        raise UserError(
            f"{folder}: not a model package (no manifest.json); serve runs exported packages "
            "(crosslmm-edge export CHECKPOINT --out PKG)"
        )
    if max_context is not None and max_context < 1:
        raise UserError(f"--max-context {max_context}: must be at least 1")
    assistant = ServedAssistant(
        folder,
        provider=provider,
        precision=precision,
        backend=backend,
        max_context=max_context,
        system=settings.system,
        threads=threads,
    )
    package_frames = assistant.pipeline.package.max_frames
    settings.max_frames = min(settings.max_frames or package_frames, package_frames)
    if settings.default_frames is not None and settings.default_frames > settings.max_frames:
        raise UserError(
            f"--frames {settings.default_frames}: the package holds at most {settings.max_frames}"
        )
    live = None
    if settings.live_source:
        live = LiveFeed(
            settings.live_source, settings.live_sample_fps, settings.live_window_s,
            settings.live_loop,
        )  # fmt: skip
    engine = Engine(assistant, settings, live)
    return ServeApp(engine, MediaStore(settings, has_live=live is not None), settings)


def run_server(app: ServeApp, settings: ServeSettings, log_level: str = "info") -> None:
    """Serve until interrupted (uvicorn handles SIGINT/SIGTERM and drains connections)."""
    uvicorn.run(
        app.starlette(),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_keep_alive=5,
        limit_concurrency=4 * settings.queue_size + 16,  # beyond: 503 from uvicorn itself
        h11_max_incomplete_event_size=64 * 1024,  # request line + headers
    )
