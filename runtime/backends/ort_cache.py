"""ONNX Runtime's optimized graphs, kept per user so a package opens without re-optimizing.

Building a session spends most of its time in graph optimization (the 0.5B
package opens in 5.5 s without this cache and 2.7 s with it, ``bench --suite
startup``). ONNX Runtime can save the graph it optimized; loading that one
with optimizations off skips the work. What was optimized is only valid for
exactly what produced it, so an entry's key hashes all of it: the source
graph's manifest sha256 values (checked against the files before this module
is asked), the ONNX Runtime version, the provider, the optimizers switched
off, the cache's own format and the processor (ONNX Runtime's CPU fusions
follow its instruction set).

Where entries live and why they can be trusted:

- in the user's own cache folder (``$CROSSLMM_EDGE_ORT_CACHE``, else
  ``$XDG_CACHE_HOME`` or ``~/.cache`` + ``crosslmm-edge/ort-optimized``),
  never in the package: a copied package cannot carry a forged entry;
- an entry is used only if its folder is a directory owned by this user that
  nobody else may write, and every file still has the device, inode, size,
  mtime and ctime recorded when it was written (any write or replacement
  changes ctime or the inode; see ``hash_cache`` for why that holds);
- an entry is written in a hidden staging folder and renamed into place, so
  a killed run leaves no half entry (``staging.clean_stale`` removes its litter).

Anything off is a miss: the graph is optimized again and the entry rewritten.
Only the CPU provider is cached (CUDA graphs are not checked here; TensorRT
has its own engine cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import stat
from pathlib import Path

from ..errors import UserError
from ..package.files import open_regular, user_cache_path, write_text_atomic
from ..package.hash_cache import file_stamp
from ..package.staging import clean_stale, temp_name

ENV_PATH = "CROSSLMM_EDGE_ORT_CACHE"  # a folder, or "off"
FORMAT = 1
GRAPH, DATA, RECORD = "graph.onnx", "graph.onnx.data", "record.json"
MAX_ENTRIES = 12  # one per graph: four packages of three graphs
MAX_RECORD_BYTES = 64 << 10


def default_cache_root() -> Path | None:
    """``$CROSSLMM_EDGE_ORT_CACHE``, else the per-user cache folder; None if "off"."""
    return user_cache_path(ENV_PATH, "ort-optimized")


def processor_id() -> str:
    """The machine and the CPU's model and instruction-set flags, as one string."""
    fields = {"machine": platform.machine()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                name = name.strip()
                if name in ("model name", "flags", "Features", "CPU part") and name not in fields:
                    fields[name] = value.strip()
                if not line.strip() and len(fields) > 1:
                    break  # the first processor's block is enough
    except OSError:
        fields["processor"] = platform.processor()
    return json.dumps(fields, sort_keys=True)


def cache_key(
    graph_hashes: list[str], provider: str, ort_version: str, disabled: list[str], processor: str
) -> str:
    """sha256 over everything an optimized graph depends on."""
    fields = {
        "format": FORMAT,
        "graph": graph_hashes,
        "provider": provider,
        "onnxruntime": ort_version,
        "disabled_optimizers": sorted(disabled),
        "processor": processor,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class OptimizedGraphCache:
    """Entries of optimized graphs under ``root``, one folder per key."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._processor: str | None = None  # read once, not per graph

    @classmethod
    def default(cls) -> OptimizedGraphCache:
        return cls(default_cache_root())

    def key(
        self, graph_hashes: list[str], provider: str, ort_version: str, disabled: list[str]
    ) -> str:
        """``cache_key`` on this machine's processor."""
        if self._processor is None:
            self._processor = processor_id()
        return cache_key(graph_hashes, provider, ort_version, disabled, self._processor)

    def lookup(self, key: str) -> Path | None:
        """The cached optimized graph for ``key``, or None if absent or not trustworthy."""
        if self.root is None:
            return None
        folder = self.root / key
        try:
            if not _private_dir(folder) or not _private_dir(self.root):
                return None
            with open_regular(folder / RECORD, MAX_RECORD_BYTES, "cache record") as handle:
                record = json.loads(handle.read().decode("utf-8"))
            stamps = record["stamps"]
            if record.get("key") != key or set(stamps) != {GRAPH, DATA}:
                return None
            if any(file_stamp((folder / name).lstat()) != stamps[name] for name in (GRAPH, DATA)):
                return None
            os.utime(folder / RECORD)  # last use, for eviction
        except (OSError, UserError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return folder / GRAPH

    def staging(self, key: str) -> Path | None:
        """An empty private folder to optimize into (None: caching is off or impossible)."""
        if self.root is None:
            return None
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _private_dir(self.root):
                return None
            clean_stale(self.root)
            temp = self.root / temp_name(key)
            temp.mkdir(mode=0o700)
        except (OSError, UserError):
            return None
        return temp

    def commit(self, key: str, temp: Path) -> bool:
        """Record the files ONNX Runtime wrote into ``temp`` and move it into place;
        whether an entry was written."""
        try:
            root = self.root
            if root is None:  # staging() gives no folder then: nothing to commit
                raise OSError("caching is off")
            if not (temp / GRAPH).is_file():
                raise OSError("ONNX Runtime wrote no optimized graph")
            if not (temp / DATA).exists():
                (temp / DATA).touch()  # a graph small enough to hold its weights inline
            stamps = {name: file_stamp((temp / name).lstat()) for name in (GRAPH, DATA)}
            write_text_atomic(temp / RECORD, json.dumps({"key": key, "stamps": stamps}))
            final = root / key
            shutil.rmtree(final, ignore_errors=True)  # a stale or untrusted entry
            os.rename(temp, final)  # fails if another process committed first: keep theirs
            self._evict(root)
            return True
        except (OSError, UserError):
            return False  # a cache that cannot be written only costs the next start its time
        finally:
            shutil.rmtree(temp, ignore_errors=True)

    def _evict(self, root: Path) -> None:
        """Drop the least recently used entries of ``root`` beyond ``MAX_ENTRIES``."""
        entries = []
        for folder in root.iterdir():
            record = folder / RECORD
            if folder.name.startswith(".") or not record.is_file():
                continue
            entries.append((record.stat().st_mtime_ns, folder))
        for _, folder in sorted(entries)[:-MAX_ENTRIES]:
            shutil.rmtree(folder, ignore_errors=True)


def _private_dir(folder: Path) -> bool:
    """A real directory of this user's that no one else may write."""
    info = folder.lstat()
    writable_by_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not writable_by_others
