"""Video files in and out: decode, sample and preprocess frames (spec section 2).

Torch-free: PyAV decodes, Pillow resizes, numpy does the rest. Reading takes
two decode passes so that memory stays bounded by the sampled frames: the
first pass counts the decodable frames, the second keeps only those sampled.
Every decoder failure becomes a ``UserError`` that names the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from ..errors import UserError
from ..package.files import file_sha256, write_atomic

# What PyAV raises on bad input: its FFmpeg errors (many also subclass
# OSError/ValueError) and plain OSError/ValueError from the file layer.
DECODER_ERRORS = (av.error.FFmpegError, OSError, ValueError)

# FFmpeg renders text files (.txt, .nfo, .asc ...) as "videos" of ANSI art;
# those are text, not video, so they are refused.
TEXT_ART_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})


def sample_indices(num_decoded: int, num_frames: int) -> list[int]:
    """Centres of ``num_frames`` equal segments of ``num_decoded`` frames.

    frame i = floor((i + 0.5) * n / T); all frames when there are fewer than T.
    """
    if num_frames < 1:
        raise UserError(f"number of frames must be at least 1, got {num_frames}")
    if num_decoded <= num_frames:
        return list(range(num_decoded))
    # Integer arithmetic: floor((2i + 1) * n / 2T) without float rounding.
    return [(2 * i + 1) * num_decoded // (2 * num_frames) for i in range(num_frames)]


def _open_video(path: str | os.PathLike) -> tuple[av.container.InputContainer, av.VideoStream]:
    """Open ``path`` and return the container and its first video stream."""
    if not os.path.exists(path):
        raise UserError(f"video file not found: {path}")
    if not os.path.isfile(path):
        raise UserError(f"not a video file (not a regular file): {path}")
    try:
        container = av.open(os.fspath(path), mode="r")
    except DECODER_ERRORS as exc:
        raise UserError(f"cannot read video {path}: {_reason(exc)}") from None
    if not container.streams.video:
        container.close()
        raise UserError(f"no video stream in {path} (not a video, or truncated)")
    stream = container.streams.video[0]
    if stream.codec_context.name in TEXT_ART_CODECS:
        container.close()
        raise UserError(f"not a video file (FFmpeg reads it as text): {path}")
    stream.thread_type = "AUTO"
    return container, stream


def _reason(exc: BaseException) -> str:
    """A short reason from an av/OS error, without the repeated file name."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _decoded_frames(path: str | os.PathLike) -> Iterator[tuple[int, av.VideoFrame]]:
    """Yield (index, frame) for every decodable frame; decoder errors -> UserError."""
    container, stream = _open_video(path)
    with container:
        try:
            yield from enumerate(container.decode(stream))
        except DECODER_ERRORS as exc:
            raise UserError(f"corrupt video {path}: {_reason(exc)}") from None


def count_frames(path: str | os.PathLike) -> int:
    """Number of decodable frames of the first video stream; 0 frames -> UserError."""
    count = sum(1 for _ in _decoded_frames(path))
    if count == 0:
        raise UserError(f"video has no decodable frames: {path}")
    return count


def _iter_sampled_rgb(path: str | os.PathLike, indices: Sequence[int]) -> Iterator[np.ndarray]:
    """Yield the frames at ``indices`` (ascending order) as uint8 [H, W, 3] RGB."""
    wanted = sorted(set(indices))
    if not wanted:
        return
    position = 0
    for index, frame in _decoded_frames(path):
        if index != wanted[position]:
            continue
        yield frame.to_ndarray(format="rgb24")  # [H, W, 3]
        position += 1
        if position == len(wanted):
            return  # the rest of the file is not needed
    raise UserError(f"video {path} ended before frame {wanted[position]}")


def read_frames(path: str | os.PathLike, indices: Sequence[int]) -> np.ndarray:
    """Decode the frames at ``indices`` -> uint8 [k, H, W, 3] RGB, in the order given."""
    if not indices:
        raise ValueError("no frame indices given")
    wanted = sorted(set(indices))
    by_index = dict(zip(wanted, _iter_sampled_rgb(path, wanted), strict=True))
    return np.stack([by_index[i] for i in indices])


def _normalise_table() -> np.ndarray:
    """uint8 value -> (v/255 - 0.5)/0.5 in float32, computed as Hugging Face does.

    SiglipImageProcessor rescales in float64 then casts to float32 before
    normalising; a 256-entry table gives bit-identical values and is fast.
    """
    scaled = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    return (scaled - np.float32(0.5)) / np.float32(0.5)


def preprocess(frames: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 RGB frames [k, H, W, 3] -> float32 [k, 3, S, S], SigLIP style.

    Bicubic resize (Pillow, as SiglipImageProcessor) only when the size differs,
    scale 1/255, normalise with mean 0.5 and std 0.5, channels first.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [k, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[1:3] != (image_size, image_size):
        frames = np.stack(
            [
                np.asarray(
                    Image.fromarray(frame).resize(
                        (image_size, image_size), Image.Resampling.BICUBIC
                    )
                )
                for frame in frames
            ]
        )  # [k, S, S, 3]
    pixels = _normalise_table()[frames]  # [k, S, S, 3] float32
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))  # [k, 3, S, S]


def iter_video_chunks(
    path: str | os.PathLike, num_frames: int, image_size: int, chunk_frames: int
) -> Iterator[np.ndarray]:
    """Yield the sampled, preprocessed frames in chunks of float32 [<=chunk, 3, S, S].

    At most ``chunk_frames`` decoded frames are held at a time.
    """
    if chunk_frames < 1:
        raise UserError(f"chunk size must be at least 1 frame, got {chunk_frames}")
    indices = sample_indices(count_frames(path), num_frames)
    pending: list[np.ndarray] = []
    for rgb in _iter_sampled_rgb(path, indices):
        # Frame by frame, so a stream whose resolution changes still works.
        pending.append(preprocess(rgb[None], image_size))  # [1, 3, S, S]
        if len(pending) == chunk_frames:
            yield np.concatenate(pending)
            pending = []
    if pending:
        yield np.concatenate(pending)


def load_video(path: str | os.PathLike, num_frames: int, image_size: int) -> np.ndarray:
    """Decode, sample and preprocess a whole video -> float32 [T, 3, S, S]."""
    chunks = list(iter_video_chunks(path, num_frames, image_size, chunk_frames=num_frames))
    return np.concatenate(chunks)


def video_fingerprint(path: str | os.PathLike) -> str:
    """sha256 hex digest of the file's bytes (streamed, bounded memory)."""
    try:
        return file_sha256(path)
    except OSError as exc:
        raise UserError(f"cannot read video {path}: {_reason(exc)}") from None


def _encoder_settings() -> tuple[str, str, dict[str, str]]:
    """(codec, pixel format, options) for a high-quality mp4.

    libx264rgb at qp 0 is lossless in RGB: the frames read back are the frames
    written, so synthetic videos (calibration, eval) decode to the same pixels
    in every run. libx264's lossy modes do not: on this project's machines its
    crf-4 output for the same frames differed from run to run even with one
    thread, and calibration's hashes with it. libx264 in 4:4:4 (colour of
    one-pixel details kept) and then mpeg4 (4:2:0, odd sizes accepted) are the
    fallbacks.
    """
    if "libx264rgb" in av.codecs_available:
        return "libx264rgb", "rgb24", {"qp": "0", "preset": "medium", "threads": "1"}
    if "libx264" in av.codecs_available:
        return "libx264", "yuv444p", {"crf": "4", "preset": "medium", "threads": "1"}
    return "mpeg4", "yuv420p", {"qscale": "1"}


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int | Fraction = 8) -> None:
    """Write uint8 RGB frames [T, H, W, 3] to an mp4 at ``path``, atomically."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(f"expected uint8 frames [T>0, H, W, 3], got {frames.dtype} {frames.shape}")
    codec, pix_fmt, options = _encoder_settings()

    def encode(handle) -> None:
        with av.open(handle, mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = pix_fmt
            stream.options = options
            for rgb in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            container.mux(stream.encode(None))  # flush the encoder

    write_atomic(path, encode)
