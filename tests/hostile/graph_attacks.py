"""Attacks on a package's files: each takes a package copy and damages it one way."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tests.trust_helpers import with_external_data


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _edit(pkg: Path, change) -> None:
    data = json.loads((pkg / "manifest.json").read_text())
    change(data)
    (pkg / "manifest.json").write_text(json.dumps(data))


def _art(data, role):
    return data["graphs"][role]["artifacts"][0]


def _outside(pkg: Path) -> Path:
    folder = pkg.parent / "outside"
    folder.mkdir(exist_ok=True)
    return folder


def swap_roles(pkg: Path) -> None:
    a, b = pkg / "vision_encoder.onnx", pkg / "pooling.onnx"
    a.rename(pkg / "t"), b.rename(a), (pkg / "t").rename(b)
    _edit(pkg, lambda d: (_art(d, "vision_encoder").update(sha256=_sha(a)),
                          _art(d, "pooling").update(sha256=_sha(b))))  # fmt: skip


def truncated_graph_rehashed(pkg: Path) -> None:
    path = pkg / "llm.onnx"
    path.write_bytes(path.read_bytes()[:5000])
    _edit(pkg, lambda d: _art(d, "llm").update(sha256=_sha(path)))


def random_graph_rehashed(pkg: Path) -> None:
    path = pkg / "pooling.onnx"
    path.write_bytes(os.urandom(20000))
    _edit(pkg, lambda d: _art(d, "pooling").update(sha256=_sha(path)))


def dotdot_graph(pkg: Path) -> None:
    (pkg / "llm.onnx").rename(pkg.parent / "outside-llm.onnx")
    _edit(pkg, lambda d: _art(d, "llm").update(file="../outside-llm.onnx"))


def absolute_graph(pkg: Path) -> None:
    target = _outside(pkg) / "llm.onnx"
    (pkg / "llm.onnx").rename(target)
    _edit(pkg, lambda d: _art(d, "llm").update(file=str(target)))


def symlinked_graph(pkg: Path) -> None:
    target = _outside(pkg) / "llm.onnx"
    (pkg / "llm.onnx").rename(target)
    (pkg / "llm.onnx").symlink_to(target)


def symlinked_folder(pkg: Path) -> None:
    target = _outside(pkg)
    (pkg / "llm.onnx").rename(target / "llm.onnx")
    (pkg / "sub").symlink_to(target)
    _edit(pkg, lambda d: _art(d, "llm").update(file="sub/llm.onnx"))


def fifo_graph(pkg: Path) -> None:
    (pkg / "vision_encoder.onnx").unlink()
    os.mkfifo(pkg / "vision_encoder.onnx")


def folder_graph(pkg: Path) -> None:
    (pkg / "vision_encoder.onnx").unlink()
    (pkg / "vision_encoder.onnx").mkdir()


def external_data_escape(pkg: Path) -> None:
    with_external_data(pkg, "../outside.data", listed=True)
    (pkg / "pooling.data").rename(pkg.parent / "outside.data")
    (pkg / "pooling.data").write_bytes(b"")
    _edit(
        pkg,
        lambda d: _art(d, "pooling")["external_data"][0].update(sha256=_sha(pkg / "pooling.data")),
    )


def external_data_unlisted(pkg: Path) -> None:
    with_external_data(pkg, "pooling.data", listed=False)


def external_data_flipped(pkg: Path) -> None:
    with_external_data(pkg, "pooling.data", listed=True)
    data = bytearray((pkg / "pooling.data").read_bytes())
    data[len(data) // 3] ^= 0x10
    (pkg / "pooling.data").write_bytes(bytes(data))


def flipped_graph_byte(pkg: Path) -> None:
    data = bytearray((pkg / "llm.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (pkg / "llm.onnx").write_bytes(bytes(data))


def tokenizer_tampered(pkg: Path) -> None:
    (pkg / "tokenizer.json").write_text((pkg / "tokenizer.json").read_text() + "\n")


def tokenizer_symlinked(pkg: Path) -> None:
    target = _outside(pkg) / "tokenizer.json"
    (pkg / "tokenizer.json").rename(target)
    (pkg / "tokenizer.json").symlink_to(target)


def manifest_symlinked(pkg: Path) -> None:
    target = _outside(pkg) / "manifest.json"
    (pkg / "manifest.json").rename(target)
    (pkg / "manifest.json").symlink_to(target)


def manifest_deep_nesting(pkg: Path) -> None:
    (pkg / "manifest.json").write_text(
        '{"format_version": 2, "x": ' + "[" * 100000 + "]" * 100000 + "}"
    )


def manifest_huge(pkg: Path) -> None:
    with open(pkg / "manifest.json", "w") as handle:
        handle.write('{"format_version": 2, "pad": "')
        handle.write("x" * (70 << 20))
        handle.write('"}')


def manifest_fifo(pkg: Path) -> None:
    (pkg / "manifest.json").unlink()
    os.mkfifo(pkg / "manifest.json")


def manifest_not_utf8(pkg: Path) -> None:
    (pkg / "manifest.json").write_bytes(b'{"format_version": 2, "\xff": 1}')


def renamed_tensor(pkg: Path) -> None:
    _edit(pkg, lambda d: _art(d, "llm")["outputs"][0].update(name="evil"))


def int8_label_without_files(pkg: Path) -> None:
    def add(d):
        extra = dict(_art(d, "llm"), precision="int8", file="llm.int8.onnx")
        d["graphs"]["llm"]["artifacts"].append(extra)

    _edit(pkg, add)


ATTACKS = {f.__name__: f for f in (
    swap_roles, truncated_graph_rehashed, random_graph_rehashed, dotdot_graph, absolute_graph,
    symlinked_graph, symlinked_folder, fifo_graph, folder_graph, external_data_escape,
    external_data_unlisted, external_data_flipped, flipped_graph_byte, tokenizer_tampered,
    tokenizer_symlinked, manifest_symlinked, manifest_deep_nesting, manifest_huge, manifest_fifo,
    manifest_not_utf8, renamed_tensor, int8_label_without_files,
)}  # fmt: skip
