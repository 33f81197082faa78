"""What the fake ``tensorrt`` modules share: enums, constants, the logger and host memory."""

from __future__ import annotations

import enum
import re

import numpy as np

MAGIC = b"FAKE-TRT-PLAN\n"
CACHE_MAGIC = b"FAKE-TIMING-CACHE "
CPU = ["CPUExecutionProvider"]
ORT_TYPES = {
    "tensor(float)": "FLOAT",
    "tensor(float16)": "HALF",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int8)": "INT8",
}
NUMPY = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT64": np.int64,
    "INT32": np.int32,
    "INT8": np.int8,
}
# Version-compatible plans across majors (TensorRT 11.4 support matrix): 8 -> 10, 10 -> 11.
CROSS_MAJOR = {(8, 10), (10, 11)}
VERBOSE_LINES_PER_BUILD = 200  # a real build logs thousands at VERBOSE
INFO_LINES_AFTER_FAILURE = 30  # memory-usage lines TensorRT logs after a failed build


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def _enum(name: str, *members: str) -> type[enum.IntEnum]:
    return enum.IntEnum(name, {m: i for i, m in enumerate(members)})


DataType = _enum("DataType", "FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "INT64")
TensorIOMode = _enum("TensorIOMode", "NONE", "INPUT", "OUTPUT")
NetworkDefinitionCreationFlag = _enum(
    "NetworkDefinitionCreationFlag", "EXPLICIT_BATCH", "UNUSED", "STRONGLY_TYPED"
)
BuilderFlag = _enum("BuilderFlag", "FP16", "INT8", "VERSION_COMPATIBLE")
MemoryPoolType = _enum("MemoryPoolType", "WORKSPACE")
ExecutionContextAllocationStrategy = _enum(
    "ExecutionContextAllocationStrategy", "STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"
)


def hardware_levels(version: tuple[int, ...]) -> type[enum.IntEnum]:
    """kSAME_COMPUTE_CAPABILITY first appears in NvInfer.h at v10.9.0."""
    members = ["NONE", "AMPERE_PLUS"] + (["SAME_COMPUTE_CAPABILITY"] if version >= (10, 9) else [])
    return _enum("HardwareCompatibilityLevel", *members)


class ILogger:
    Severity = _enum("Severity", "INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")

    def __init__(self) -> None:
        pass


class IProgressMonitor:
    def __init__(self) -> None:
        pass


class HostMemory(bytearray):
    """``IHostMemory``: supports the buffer protocol (``memoryview``) and ``nbytes``."""

    @property
    def nbytes(self) -> int:
        return len(self)


def log(logger, severity: str, text: str) -> None:
    """Log through a ``trt.ILogger`` as TensorRT does."""
    logger.log(ILogger.Severity[severity], text)


def error(logger, text: str) -> None:
    log(logger, "ERROR", text)
