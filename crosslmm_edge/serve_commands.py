"""The ``serve`` subcommand: a package behind a local, OpenAI-compatible HTTP API.

Cheap to import: the HTTP stack (the ``serve`` extra) loads when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .assistant_commands import add_package_options
from .runtime.errors import UserError

MiB = 1 << 20


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the CLI."""
    serve = subparsers.add_parser(
        "serve",
        help="serve a package over an OpenAI-compatible HTTP API",
        description="Answer POST /v1/chat/completions about videos (a video_url part), keep "
        "encoded videos across requests, optionally watch a live source. Binds 127.0.0.1; "
        "any other address needs --api-key.",
    )
    serve.add_argument("package", metavar="PKG", help="model package folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=None, help="clients send 'Authorization: Bearer KEY'")
    serve.add_argument("--served-model-name", default=None, help="model id (default: PKG's name)")
    serve.add_argument("--media-dir", type=Path, default=None, help="videos clients may name")
    serve.add_argument("--upload-dir", type=Path, default=None, help="default: a temporary folder")
    serve.add_argument(
        "--frames", type=int, default=None, help="frames per video (default: model's)"
    )
    serve.add_argument("--max-frames", type=int, default=None, help="most frames a request may ask")
    serve.add_argument("--max-new-tokens", type=int, default=64, help="when max_tokens is absent")
    serve.add_argument("--temperature", type=float, default=0.0, help="when a request gives none")
    serve.add_argument("--system", default=None, help="default system prompt")
    serve.add_argument("--max-body-mib", type=float, default=8, help="chat request body bound")
    serve.add_argument("--max-video-mib", type=float, default=64, help="one video's bound")
    serve.add_argument("--max-video-seconds", type=float, default=3600)
    serve.add_argument("--state-cache-mib", type=float, default=512, help="encoded videos kept")
    serve.add_argument("--queue-size", type=int, default=64, help="waiting requests; then 503")
    serve.add_argument("--live", metavar="SOURCE", default=None, help="camera, stream or file")
    serve.add_argument("--window", type=float, default=4.0, help="live window in seconds")
    serve.add_argument("--live-fps", type=float, default=2.0, help="live frames kept per second")
    serve.add_argument("--live-loop", action="store_true", help="replay a live file (simulated)")
    serve.add_argument("--threads", type=int, default=0, help="intra-op threads (0: default)")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    add_package_options(serve)
    serve.set_defaults(func=run_serve)


def settings_from(args: argparse.Namespace):
    """``ServeSettings`` of the parsed options."""
    from .runtime.serve.settings import ServeSettings

    if not 0 <= args.temperature <= 2 or args.max_new_tokens < 1:
        raise UserError("--temperature must be in [0, 2] and --max-new-tokens >= 1")
    return ServeSettings(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        model_name=args.served_model_name or Path(args.package).resolve().name,
        media_dir=args.media_dir,
        upload_dir=args.upload_dir,
        max_body_bytes=int(args.max_body_mib * MiB),
        max_video_bytes=int(args.max_video_mib * MiB),
        max_video_seconds=args.max_video_seconds,
        max_frames=args.max_frames,
        default_frames=args.frames,
        state_cache_bytes=int(args.state_cache_mib * MiB),
        queue_size=args.queue_size,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        system=args.system,
        live_source=args.live,
        live_window_s=args.window,
        live_sample_fps=args.live_fps,
        live_loop=args.live_loop,
    )


def run_serve(args: argparse.Namespace) -> int:
    """Open the package once and serve until interrupted."""
    try:
        from .runtime.serve.server import create_app, run_server
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in ("starlette", "uvicorn"):
            raise
        raise UserError(
            f"`serve` needs the HTTP stack (module {missing!r} is missing): "
            "pip install 'crosslmm-edge[serve]'"
        ) from None
    settings = settings_from(args)
    app = create_app(
        args.package,
        settings,
        args.provider,
        args.precision,
        args.backend,
        args.max_context,
        args.threads,
    )
    run_server(app, settings, args.log_level)
    return 0
