"""Where a request's video comes from: uploads, inline data, ``--media-dir``, the live source.

Videos are named by their content: an upload (``POST /v1/videos`` or an
inline ``data:`` URL) is stored once under ``video-<sha256>``, and a file
under ``--media-dir`` is hashed (and the hash remembered while the file is
unchanged). Remote URLs are refused: the server never fetches anything.
Every refusal is an ``ApiError`` with the status a client should see.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import av

from ..errors import UserError
from ..package.containment import inside, name_problem
from ..package.files import file_sha256
from ..video.decode import DECODER_ERRORS, TEXT_ART_CODECS
from .api_error import ApiError, bad_request
from .settings import ServeSettings

LIVE = "live"
MAX_REMEMBERED_HASHES = 10_000  # media-file hashes kept by (path, size, mtime, inode)
VIDEO_ID = re.compile(r"video-([0-9a-f]{64})")
DATA_URL = re.compile(r"data:(video/[\w.+-]+|application/octet-stream);base64,", re.ASCII)
REMOTE_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class VideoRef:
    """A resolved video: a local file and its content hash, or the live source."""

    sha256: str  # LIVE for the live source
    path: Path | None = None

    @property
    def is_live(self) -> bool:
        return self.sha256 == LIVE

    @property
    def video_id(self) -> str:
        return LIVE if self.is_live else f"video-{self.sha256}"


class MediaStore:
    """Uploaded videos (content-addressed, bounded in bytes) and the ``--media-dir`` view."""

    def __init__(self, settings: ServeSettings, has_live: bool) -> None:
        self.settings, self.has_live = settings, has_live
        self._owned = settings.upload_dir is None  # a temporary folder: removed by close()
        folder = settings.upload_dir or Path(tempfile.mkdtemp(prefix="crosslmm-serve-"))
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._uploads: OrderedDict[str, int] = OrderedDict()  # sha256 -> bytes, oldest first
        self._hashes: dict[tuple, str] = {}  # (path, size, mtime, inode) -> sha256
        self._lock = threading.Lock()

    def close(self) -> None:
        """Remove the uploads of a temporary folder."""
        if self._owned:
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- uploads ----------------------------------------------------------
    def store_chunks(self, chunks: Iterable[bytes]) -> VideoRef:
        """Store a video streamed in ``chunks``: hashed and bounded as it arrives."""
        limit = self.settings.max_video_bytes
        digest, size = hashlib.sha256(), 0
        part = self.folder / f"{uuid.uuid4().hex}.part"
        try:
            with open(part, "xb") as handle:
                for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, f"the video is larger than {limit} bytes")
                    digest.update(chunk)
                    handle.write(chunk)
            if size == 0:
                raise bad_request("the video is empty")
            probe_video(part, self.settings)
            return self._keep(part, digest.hexdigest(), size)
        finally:
            part.unlink(missing_ok=True)

    def _keep(self, part: Path, sha256: str, size: int) -> VideoRef:
        target = self.folder / f"{sha256}.video"
        with self._lock:
            os.replace(part, target)
            self._uploads[sha256] = size
            self._uploads.move_to_end(sha256)
            self._evict(keep=sha256)
        return VideoRef(sha256, target)

    def _evict(self, keep: str) -> None:
        """Drop the least recently used uploads beyond the store's byte bound."""
        while sum(self._uploads.values()) > self.settings.max_upload_store_bytes:
            oldest = next(iter(self._uploads))
            if oldest == keep:
                return
            del self._uploads[oldest]
            (self.folder / f"{oldest}.video").unlink(missing_ok=True)

    def delete(self, video_id: str) -> None:
        """Remove an upload (its encoded state may stay cached until evicted)."""
        match = VIDEO_ID.fullmatch(video_id)
        with self._lock:
            if match is None or match.group(1) not in self._uploads:
                raise ApiError(404, f"no uploaded video {video_id[:80]!r}")
            del self._uploads[match.group(1)]
            (self.folder / f"{match.group(1)}.video").unlink(missing_ok=True)

    def uploads(self) -> list[tuple[str, int]]:
        """(video id, bytes) of the stored uploads, most recently used last."""
        with self._lock:
            return [(f"video-{sha}", size) for sha, size in self._uploads.items()]

    # -- references -------------------------------------------------------
    def resolve(self, url: str, read: bool = True) -> VideoRef | None:
        """The video a request's ``video_url`` names (may store inline data).

        ``read=False`` returns None instead of reading a file's content (inline
        data, a media file not hashed yet): the caller does that off its loop.
        """
        if url == LIVE:
            if not self.has_live:
                raise bad_request("no live source: start the server with --live", "video_url")
            return VideoRef(LIVE)
        if url.startswith("data:"):
            if not read:
                return None
            return self.store_chunks([_data_url_bytes(url, self.settings.max_video_bytes)])
        match = VIDEO_ID.fullmatch(url)
        if match:
            return self._uploaded(match.group(1))
        if REMOTE_SCHEME.match(url) and not url.startswith("file://"):
            raise bad_request(
                "remote video URLs are refused (the server fetches nothing): send the video "
                "inline (data:video/...;base64,), upload it to /v1/videos, or name a file "
                "under --media-dir",
                "video_url",
            )
        return self._media_file(url.removeprefix("file://"), read)

    def _uploaded(self, sha256: str) -> VideoRef:
        with self._lock:
            if sha256 not in self._uploads:
                raise ApiError(
                    404, f"no uploaded video video-{sha256}: upload it again", "video_url"
                )
            self._uploads.move_to_end(sha256)
        return VideoRef(sha256, self.folder / f"{sha256}.video")

    def _media_file(self, name: str, read: bool) -> VideoRef | None:
        folder = self.settings.media_dir
        if folder is None:
            raise bad_request("file videos need the server's --media-dir", "video_url")
        problem = name_problem(name)
        try:
            if problem:
                raise UserError(problem)
            path = inside(folder, name, "video")
        except UserError:
            raise bad_request(
                f"video {name[:200]!r} is not a regular file inside --media-dir "
                "(relative, no '..', no links)",
                "video_url",
            ) from None
        info = path.stat()
        if info.st_size > self.settings.max_video_bytes:
            raise ApiError(413, f"video {name!r} is larger than {self.settings.max_video_bytes}")
        stamp = (str(path), info.st_size, info.st_mtime_ns, info.st_ino)
        sha256 = self._hashes.get(stamp)
        if sha256 is None:
            if not read:
                return None
            probe_video(path, self.settings)
            if len(self._hashes) >= MAX_REMEMBERED_HASHES:
                self._hashes.clear()  # files rewritten many times: start over
            sha256 = self._hashes[stamp] = file_sha256(path)
        return VideoRef(sha256, path)

    def media_files(self, limit: int = 200) -> list[str]:
        """Names of the files under ``--media-dir`` (for the web page's picker)."""
        folder = self.settings.media_dir
        if folder is None:
            return []
        names = []
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for file in sorted(files):
                names.append(os.path.relpath(os.path.join(root, file), folder))
                if len(names) >= limit:
                    return names
        return names


def _data_url_bytes(url: str, limit: int) -> bytes:
    """The payload of ``data:video/...;base64,...``, bounded before decoding."""
    match = DATA_URL.match(url)
    if not match:
        raise bad_request("a data URL must be data:video/<type>;base64,<data>", "video_url")
    payload = url[match.end() :]
    if len(payload) > (limit + 2) // 3 * 4 + 4:
        raise ApiError(413, f"the inline video is larger than {limit} bytes", "video_url")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("the data URL is not valid base64", "video_url") from None


def probe_video(path: Path, settings: ServeSettings) -> None:
    """Refuse (400) a file that is no decodable video, or one too long to sample."""
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise bad_request("no video stream in the file")
            stream = container.streams.video[0]
            if stream.codec_context.name in TEXT_ART_CODECS:
                raise bad_request("not a video (FFmpeg reads it as text)")
            seconds = container.duration / av.time_base if container.duration else 0.0
            if seconds > settings.max_video_seconds:
                raise bad_request(
                    f"the video lasts {seconds:.0f} s, at most {settings.max_video_seconds:.0f}"
                )
            if stream.frames > settings.max_decoded_frames:
                raise bad_request(
                    f"the video has {stream.frames} frames, at most {settings.max_decoded_frames}"
                )
            next(container.decode(stream))  # one frame must decode
    except (*DECODER_ERRORS, StopIteration) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or "no frame decodes"
        raise bad_request(f"the video cannot be decoded: {reason[:200]}") from None
