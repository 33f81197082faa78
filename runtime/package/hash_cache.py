"""Remember which large files already matched their sha256, safely.

Hashing a 7 GiB package on every start costs tens of seconds on a Jetson,
so a file that matched is remembered by what the kernel says about it:
device, inode, size, mtime and ctime in nanoseconds. Any write changes mtime
and ctime; ``touch``/``utime`` can set mtime back but always moves ctime to
now, and only root (by moving the clock) can choose a ctime; replacing a file
(rename, copy) changes the inode. So a tampered file misses the cache and is
hashed again. Two more rules close the gaps:

- racy timestamps: an entry is stored only when the file's mtime and ctime
  are older than ``SETTLE_S`` and unchanged across the hash, so a write in
  the same timestamp tick as our read (coarse FAT/exFAT clocks on SD cards)
  cannot leave a stale entry;
- the cache file lives in the user's own cache folder, not in the package (a
  package copied from elsewhere could carry a forged cache), and is ignored
  unless it is a regular file owned by this user that nobody else may write.

Small files (< ``min_bytes``) are simply hashed: it costs milliseconds.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

from ..errors import UserError
from .files import (
    file_sha256,
    open_regular,
    user_cache_path,
    write_text_atomic,
)

ENV_PATH = "CROSSLMM_EDGE_HASH_CACHE"  # a file path, or "off"
DEFAULT_MIN_BYTES = 64 << 20
SETTLE_S = 2.0
MAX_ENTRIES = 512
MAX_CACHE_BYTES = 1 << 20


def default_cache_path() -> Path | None:
    """``$CROSSLMM_EDGE_HASH_CACHE``, else ``$XDG_CACHE_HOME`` or ``~/.cache``; None if off."""
    return user_cache_path(ENV_PATH, "verified-sha256.json")


def file_stamp(info: os.stat_result) -> list[int]:
    """What changes whenever a file is written or replaced: device, inode, size, mtime, ctime."""
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


class HashCache:
    """sha256 checks of files, skipped for large files already verified unchanged."""

    def __init__(
        self, path: Path | None, min_bytes: int = DEFAULT_MIN_BYTES, settle_s: float = SETTLE_S
    ) -> None:
        self.path, self.min_bytes, self.settle_s = path, min_bytes, settle_s
        self._entries: dict[str, list] | None = None  # read on first use

    @classmethod
    def default(cls) -> HashCache:
        """The per-user cache (see ``default_cache_path``)."""
        return cls(default_cache_path())

    def matches(self, path: Path, expected: str) -> bool:
        """Whether the file at ``path`` has sha256 ``expected`` (hashing it if needed)."""
        before = os.stat(path)
        big = self.path is not None and before.st_size >= self.min_bytes
        key = os.path.realpath(path)
        if big and self._load().get(key) == [*file_stamp(before), expected]:
            return True
        digest = file_sha256(path)
        after = os.stat(path)
        settled = time.time_ns() - max(after.st_mtime_ns, after.st_ctime_ns) > self.settle_s * 1e9
        if big and digest == expected and file_stamp(before) == file_stamp(after) and settled:
            self._remember(key, [*file_stamp(after), expected])
        return digest == expected

    def _load(self) -> dict[str, list]:
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def _read(self) -> dict[str, list]:
        """The stored entries; a missing, foreign or damaged cache is an empty one."""
        assert self.path is not None
        try:
            info = self.path.lstat()
            foreign = info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            if foreign or not stat.S_ISREG(info.st_mode):
                return {}
            with open_regular(self.path, MAX_CACHE_BYTES, "hash cache") as handle:
                data = json.loads(handle.read().decode("utf-8"))
        except (OSError, UserError, ValueError, AttributeError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 6}

    def _remember(self, key: str, entry: list) -> None:
        """Store one entry; failing to write the cache only costs a re-hash next time."""
        entries = self._load()
        entries.pop(key, None)
        entries[key] = entry
        while len(entries) > MAX_ENTRIES:
            entries.pop(next(iter(entries)))
        assert self.path is not None
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(entries))
        except (OSError, UserError):
            pass
