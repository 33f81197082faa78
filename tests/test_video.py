"""Video decoding, frame sampling and SigLIP preprocessing (spec section 2)."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from crosslmm_edge.runtime.errors import UserError
from crosslmm_edge.runtime.video import decode as video
from crosslmm_edge.runtime.video.decode import (
    count_frames,
    iter_video_chunks,
    load_video,
    preprocess,
    read_frames,
    sample_indices,
    video_fingerprint,
    write_video,
)

COLOURS = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255],
     [128, 128, 128], [250, 120, 30], [20, 60, 200], [255, 255, 255], [0, 0, 0]],
    dtype=np.uint8,
)  # fmt: skip


def flat_frames(count: int, height: int, width: int) -> np.ndarray:
    """uint8 [count, H, W, 3], frame i filled with COLOURS[i % len(COLOURS)]."""
    colours = COLOURS[np.arange(count) % len(COLOURS)]
    return np.broadcast_to(colours[:, None, None, :], (count, height, width, 3)).copy()


@pytest.fixture
def flat_video(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """An 11-frame mp4 of flat colours at an odd size, and the frames written."""
    frames = flat_frames(11, 17, 33)
    path = tmp_path / "flat.mp4"
    write_video(path, frames)
    return path, frames


# -- sampling -------------------------------------------------------------


@pytest.mark.parametrize(("n", "t"), [(100, 4), (32, 32), (33, 32), (1000, 7), (64, 3), (5, 2)])
def test_sample_indices_are_segment_centres(n: int, t: int) -> None:
    expected = [math.floor((i + 0.5) * n / t) for i in range(t)]
    assert sample_indices(n, t) == expected


def test_sample_indices_by_hand() -> None:
    assert sample_indices(100, 4) == [12, 37, 62, 87]
    assert sample_indices(10, 3) == [1, 5, 8]


@pytest.mark.parametrize(("n", "t"), [(3, 8), (1, 32), (0, 4)])
def test_sample_indices_fewer_frames_takes_all(n: int, t: int) -> None:
    assert sample_indices(n, t) == list(range(n))


def test_sample_indices_refuses_zero_frames_requested() -> None:
    with pytest.raises(UserError, match="0"):
        sample_indices(10, 0)


# -- round trip -----------------------------------------------------------


def test_written_video_reads_back(flat_video: tuple[Path, np.ndarray]) -> None:
    path, frames = flat_video
    assert count_frames(path) == 11
    got = read_frames(path, [0, 4, 10])
    assert got.shape == (3, 17, 33, 3) and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - frames[[0, 4, 10]].astype(int))
    assert diff.max() <= 6, diff.max()


def test_read_frames_keeps_the_order_given(flat_video: tuple[Path, np.ndarray]) -> None:
    path, _ = flat_video
    forward = read_frames(path, [1, 2, 7])
    backward = read_frames(path, [7, 2, 1, 2])
    np.testing.assert_array_equal(backward, forward[[2, 1, 0, 1]])


def test_small_coloured_dot_survives(tmp_path: Path) -> None:
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    frames[1, 10:12, 20:22] = [0, 255, 0]  # a 2x2 green dot in one frame
    write_video(tmp_path / "dot.mp4", frames)
    got = read_frames(tmp_path / "dot.mp4", [0, 1, 2]).astype(int)
    assert np.abs(got[1, 10:12, 20:22] - [0, 255, 0]).max() <= 20
    assert got[0].max() <= 20 and got[2].max() <= 20


@pytest.mark.skipif("libx264rgb" not in av.codecs_available, reason="PyAV without libx264rgb")
def test_written_video_is_read_back_exactly(tmp_path: Path) -> None:
    """Lossless RGB: noise at an odd size comes back bit for bit, in every writing."""
    frames = np.random.default_rng(0).integers(0, 256, (6, 17, 33, 3), dtype=np.uint8)
    for name in ("a.mp4", "b.mp4"):
        write_video(tmp_path / name, frames)
        assert np.array_equal(read_frames(tmp_path / name, list(range(6))), frames)


def test_mpeg4_fallback_handles_odd_sizes(tmp_path: Path, monkeypatch) -> None:
    """Where PyAV lacks libx264, write_video falls back to mpeg4."""
    missing = {"libx264", "libx264rgb"}
    monkeypatch.setattr(video.av, "codecs_available", av.codecs_available - missing)
    frames = flat_frames(4, 17, 33)
    write_video(tmp_path / "fallback.mp4", frames)
    with av.open(str(tmp_path / "fallback.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    got = read_frames(tmp_path / "fallback.mp4", [0, 1, 2, 3]).astype(int)
    assert got.shape == frames.shape
    assert np.abs(got - frames).max() <= 12


def test_write_video_leaves_no_temp_file_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    write_video(path, flat_frames(2, 8, 8))
    write_video(path, flat_frames(5, 8, 8))
    assert count_frames(path) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_write_video_failure_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_video(tmp_path / "v.mp4", np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError):
        write_video(tmp_path / "v.mp4", np.zeros((2, 8, 8, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


# -- preprocessing --------------------------------------------------------


def reference_preprocess(frames: np.ndarray, size: int) -> np.ndarray:
    """PIL bicubic resize, then (x/255 - 0.5)/0.5 in float64, channels first."""
    resized = [np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC)) for f in frames]
    x = np.stack(resized).astype(np.float64) / 255.0
    return ((x - 0.5) / 0.5).transpose(0, 3, 1, 2)


def test_preprocess_matches_reference_formula() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 17, 30, 3), dtype=np.uint8)
    got = preprocess(frames, 24)
    assert got.shape == (3, 3, 24, 24) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference_preprocess(frames, 24), atol=1e-6)


def test_preprocess_without_resize_is_exact() -> None:
    frames = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    got = preprocess(frames, 16)
    expected = (frames.astype(np.float64) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(got, expected.transpose(0, 3, 1, 2), atol=1e-6)
    assert got.min() == -1.0 and got.max() == 1.0


def test_preprocess_matches_hugging_face_siglip() -> None:
    processors = pytest.importorskip("transformers.models.siglip.image_processing_pil_siglip")
    processor = processors.SiglipImageProcessorPil(size={"height": 24, "width": 24})
    frames = np.random.default_rng(2).integers(0, 256, (2, 19, 33, 3), dtype=np.uint8)
    expected = processor(images=list(frames), return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(preprocess(frames, 24), expected)


def test_load_video_equals_sampled_then_preprocessed(flat_video: tuple[Path, np.ndarray]) -> None:
    path, _ = flat_video
    pixels = load_video(path, num_frames=4, image_size=16)
    assert pixels.shape == (4, 3, 16, 16) and pixels.dtype == np.float32
    expected = preprocess(read_frames(path, sample_indices(11, 4)), 16)
    np.testing.assert_array_equal(pixels, expected)


def test_chunks_concatenate_to_the_whole(flat_video: tuple[Path, np.ndarray]) -> None:
    path, _ = flat_video
    chunks = list(iter_video_chunks(path, num_frames=7, image_size=16, chunk_frames=3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(chunks), load_video(path, 7, 16))


def test_fewer_frames_than_requested_loads_all(flat_video: tuple[Path, np.ndarray]) -> None:
    path, _ = flat_video
    assert load_video(path, num_frames=32, image_size=8).shape == (11, 3, 8, 8)


# -- fingerprint ----------------------------------------------------------


def test_fingerprint_is_sha256_of_content(flat_video: tuple[Path, np.ndarray]) -> None:
    path, _ = flat_video
    content = path.read_bytes()
    assert video_fingerprint(path) == hashlib.sha256(content).hexdigest()
    other = path.with_name("other.mp4")
    other.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    assert video_fingerprint(other) != video_fingerprint(path)


# -- bad input ------------------------------------------------------------


def make_text(path: Path) -> None:
    path.write_text("just some notes\n" * 50)  # FFmpeg's tty demuxer would "play" this


def make_random(path: Path) -> None:
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes())


def make_empty_file(path: Path) -> None:
    path.write_bytes(b"")


def make_truncated(path: Path) -> None:
    write_video(path, flat_frames(6, 16, 16))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def make_corrupt(path: Path) -> None:
    """Valid container, video payload overwritten with zeros."""
    write_video(path, flat_frames(6, 16, 16))
    data = bytearray(path.read_bytes())
    start, end = data.find(b"mdat") + 4, data.find(b"moov") - 4
    data[start:end] = bytes(end - start)
    path.write_bytes(bytes(data))


def make_zero_frames(path: Path) -> None:
    """An AVI holding a video stream with no frames."""
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = 16
        container.start_encoding()


def make_audio_only(path: Path) -> None:
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


BAD_FILES = {
    "notes.txt": make_text,
    "random.mp4": make_random,
    "empty.mp4": make_empty_file,
    "truncated.mp4": make_truncated,
    "corrupt.mp4": make_corrupt,
    "no_frames.avi": make_zero_frames,
    "audio.wav": make_audio_only,
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_give_user_error_naming_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    BAD_FILES[name](path)
    with pytest.raises(UserError, match=re.escape(name)):
        load_video(path, num_frames=4, image_size=8)
    with pytest.raises(UserError, match=re.escape(name)):
        list(iter_video_chunks(path, num_frames=4, image_size=8, chunk_frames=2))


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"missing\.mp4"):
        load_video(tmp_path / "missing.mp4", 4, 8)
    with pytest.raises(UserError, match=r"missing\.mp4"):
        video_fingerprint(tmp_path / "missing.mp4")
    (tmp_path / "adir").mkdir()
    with pytest.raises(UserError, match="adir"):
        count_frames(tmp_path / "adir")
