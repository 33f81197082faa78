"""The server's options and bounds, in one record shared by the app and the worker."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

MiB = 1 << 20
LOOPBACK_NAMES = frozenset({"localhost"})


@dataclass
class ServeSettings:
    """What ``crosslmm-edge serve`` was started with (defaults are the CLI's)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    model_name: str = "crosslmm"
    media_dir: Path | None = None
    upload_dir: Path | None = None  # None: a temporary folder for this run
    max_body_bytes: int = 8 * MiB  # a chat request; base64 videos count here
    max_video_bytes: int = 64 * MiB  # one video, uploaded or inline
    max_upload_store_bytes: int = 1024 * MiB  # all uploads kept (least recently used go)
    max_video_seconds: float = 3600.0
    max_decoded_frames: int = 200_000  # frames the decoder may walk through per video
    max_frames: int | None = None  # frames sampled per video (None: the package's bound)
    default_frames: int | None = None  # None: the model's num_frames
    state_cache_bytes: int = 512 * MiB
    queue_size: int = 64
    max_new_tokens: int = 64  # default when a request gives no max_tokens
    max_tokens_limit: int = 4096
    temperature: float = 0.0  # default when a request gives none (``ask``'s default)
    system: str | None = None
    live_source: str | None = None
    live_window_s: float = 4.0
    live_sample_fps: float = 2.0
    live_loop: bool = False  # replay a finished live file (a simulated camera)

    def check(self) -> None:
        """Refuse unsafe or impossible settings before anything starts."""
        if not is_loopback(self.host) and not self.api_key:
            raise UserError(
                f"--host {self.host} is reachable from other machines: give --api-key "
                "(clients send it as 'Authorization: Bearer KEY')"
            )
        if self.media_dir is not None and not self.media_dir.is_dir():
            raise UserError(f"--media-dir {self.media_dir}: not a folder")
        for name in ("max_body_bytes", "max_video_bytes", "state_cache_bytes", "queue_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.live_window_s <= 0 or self.live_sample_fps <= 0:
            raise UserError("--window and --live-fps must be positive")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name we do not resolve here: treat it as public
