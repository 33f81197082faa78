"""The fake TensorRT builder: ONNX parser, optimisation profiles, config, timing cache.

``Profile.set_shape`` raises on mismatched ranks or min > opt > max (the
bindings' ``PY_ASSERT_RUNTIME_ERROR`` over ``IOptimizationProfile::setDimensions``);
the build fails on a profile rank other than the network's; ``set_timing_cache``
returns False for a cache of another GPU or version. The network keeps host
copies of the weights and a plan is their size, as TensorRT's are.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fake_trt.trt_types import (
    CACHE_MAGIC,
    CPU,
    INFO_LINES_AFTER_FAILURE,
    MAGIC,
    ORT_TYPES,
    VERBOSE_LINES_PER_BUILD,
    BuilderFlag,
    HostMemory,
    MemoryPoolType,
    NetworkDefinitionCreationFlag,
    error,
    log,
)


def make_builder(device, state, levels) -> tuple[type, type]:
    """(OnnxParser, Builder) over the fake ``device``, ``state`` and hardware ``levels``."""

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            self.network, self.logger, self.errors = network, logger, []

        def parse_from_file(self, path: str) -> bool:
            if not Path(path).is_file():
                self.errors.append(f"cannot open {path}")
                return False
            session = ort.InferenceSession(path, providers=CPU)
            inputs = session.get_inputs()
            io = [(a.name, ORT_TYPES[a.type], "INPUT") for a in inputs]
            io += [(a.name, ORT_TYPES[a.type], "OUTPUT") for a in session.get_outputs()]
            self.network.source, self.network.io = str(Path(path).resolve()), io
            self.network.ranks = {a.name: len(a.shape) for a in inputs}
            # The network keeps host copies of the weights until it is destroyed.
            files = [Path(path), *Path(path).parent.glob(Path(path).name + ".data")]
            self.network.weights = [np.fromfile(f, np.uint8) for f in files]
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> str:
            return self.errors[index]

    class Profile:
        def __init__(self) -> None:
            self.shapes = {}

        def set_shape(self, name, low, opt, high) -> None:
            points = [list(low), list(opt), list(high)]
            if len({len(p) for p in points}) != 1:
                raise RuntimeError("Shape provided for opt is inconsistent with other shapes.")
            for a, b, c in zip(*points, strict=True):
                if not 0 <= a <= b <= c:
                    raise RuntimeError("Shape provided for max is inconsistent with other shapes.")
            self.shapes[name] = points

    class TimingCache:
        def __init__(self, key: str | None) -> None:
            self.key = key

        def serialize(self) -> HostMemory:
            return HostMemory(CACHE_MAGIC + (self.key or "").encode())

    def cache_key() -> str:
        return f"{device.name}|{device.major}.{device.minor}|{state.version}"

    class Config:
        def __init__(self, logger) -> None:
            self.logger = logger
            self.profiles, self.flags_set, self.limits = [], set(), {}
            self.builder_optimization_level, self.progress_monitor = 3, None
            self.hardware_compatibility_level = levels.NONE
            self.cache = None

        def set_memory_pool_limit(self, pool, size) -> None:
            self.limits[pool] = size

        def set_flag(self, flag) -> None:
            self.flags_set.add(flag)

        def add_optimization_profile(self, profile) -> int:
            self.profiles.append(profile.shapes)
            return len(self.profiles) - 1

        def create_timing_cache(self, data) -> TimingCache:
            data = bytes(data)
            if not data:
                return TimingCache(cache_key())
            if data.startswith(CACHE_MAGIC):
                return TimingCache(data[len(CACHE_MAGIC) :].decode())
            return TimingCache(None)  # not a cache: it will not verify

        def set_timing_cache(self, cache, ignore_mismatch) -> bool:
            if cache.key != cache_key() and not ignore_mismatch:
                error(self.logger, "fake: timing cache header verification failed (other device)")
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0):
            return types.SimpleNamespace(flags=flags, source=None, io=[], ranks={}, weights=[])

        def create_builder_config(self):
            return Config(self.logger)

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            for index in range(VERBOSE_LINES_PER_BUILD):
                log(self.logger, "VERBOSE", f"fake: tactic {index} timed")
            plan = self._build(network, config)
            if plan is None:
                for index in range(INFO_LINES_AFTER_FAILURE):
                    log(self.logger, "INFO", f"fake: [MemUsageChange] released {index} MiB")
            return plan

        def _build(self, network, config):
            if not network.flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)):
                error(self.logger, "fake: only strongly typed networks are built here")
                return None
            if state.oom or config.limits.get(MemoryPoolType.WORKSPACE, 0) > device.total:
                error(self.logger, "Requested GPU memory could not be allocated: out of memory")
                return None
            inputs = [name for name, _, mode in network.io if mode == "INPUT"]
            for shapes in config.profiles:
                if sorted(shapes) != sorted(inputs):
                    error(self.logger, "fake: a profile must give every input")
                    return None
                for name, points in shapes.items():
                    if len(points[0]) != network.ranks[name]:
                        error(self.logger, f"fake: profile rank of {name} is not the network's")
                        return None
            if config.progress_monitor is not None:
                config.progress_monitor.phase_start("Building engine", None, 1)
                config.progress_monitor.phase_finish("Building engine")
            header = {
                "source": network.source,
                "io": network.io,
                "profiles": config.profiles,
                "version": state.version,
                "version_compatible": BuilderFlag.VERSION_COMPATIBLE in config.flags_set,
                "hardware": config.hardware_compatibility_level.name,
                "compute_capability": [device.major, device.minor],
                "gpu": device.name,
            }
            text = MAGIC + json.dumps(header).encode() + b"\n"
            plan = HostMemory(len(text) + sum(w.nbytes for w in network.weights))
            plan[: len(text)] = text  # then zeros where a plan carries the weights
            return plan

    return OnnxParser, Builder
