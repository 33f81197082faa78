"""Profile derivation and selection, engine records, buffer alignment (no TensorRT needed)."""

from __future__ import annotations

import pytest
from tiny_models import tiny_config

from crosslmm_edge.runtime.backends.engine_record import (
    mismatches,
    require_compatible,
    tegra_release,
)
from crosslmm_edge.runtime.backends.trt_buffers import (
    bind_sizes,
    eval_dim,
    is_aligned,
    rows_stay_aligned,
)
from crosslmm_edge.runtime.backends.trt_profiles import (
    FrameSizes,
    ProfileLimits,
    derive_profiles,
    select_profile,
    trt_profile_options,
)
from crosslmm_edge.runtime.errors import UserError
from crosslmm_edge.runtime.model.contract import ExportLimits, llm_spec


@pytest.fixture(params=["video", "frame"])
def llm(request):
    config = tiny_config(v2v_scope=request.param)
    spec = llm_spec(config, ExportLimits(4, 256), "float16")
    frame = FrameSizes(
        config.tokens_per_frame, config.vision_config.num_patches, request.param == "frame"
    )
    return spec, {d.name: d for d in spec.dims}, frame


def _sizes(profile, point: int) -> dict[str, int]:
    shapes = {name: triple[point] for name, triple in profile.shapes.items()}
    return {
        "text": shapes["input_ids"][1],
        "visual": shapes["visual_embeds"][1],
        "seq": shapes["position_ids"][1],
        "v2v": shapes["v2v_key.0"][1],
    }


@pytest.mark.parametrize("piece_frames", [None, 1, 3])
def test_every_point_of_every_profile_is_consistent(llm, piece_frames):
    spec, dims, frame = llm
    piece = piece_frames and piece_frames * frame.pooled
    profiles = derive_profiles(spec.inputs, dims, None, frame, piece)
    assert [p.name for p in profiles] == ["decode", "text", "visual"]
    for profile in profiles:
        for point in range(3):
            s = _sizes(profile, point)
            assert s["text"] + s["visual"] == s["seq"] >= 1
            if frame.frame_scope:
                assert s["v2v"] == s["visual"] // frame.pooled * frame.memory
    decode = profiles[0].shapes["input_ids"]
    assert decode == ((1, 1), (1, 1), (1, 1))  # decode is tuned for one token
    visual = profiles[2].shapes
    assert visual["visual_embeds"][2][1] == (piece or 4 * frame.pooled)  # 4 frames exported
    assert visual["t2v_key.0"][2][1] == 4 * frame.memory  # T2V still reads every frame


def test_a_capped_visual_profile_takes_pieces_and_names_a_larger_run(llm):
    """`build` sizes the visual profile to the runtime's largest prefill piece."""
    spec, dims, frame = llm
    profiles = derive_profiles(spec.inputs, dims, None, frame, frame.pooled)  # 1-frame pieces
    p, n = frame.pooled, frame.memory
    v2v_frames = 1 if frame.frame_scope else 4
    sizes = {"text_len": 0, "past_len": 40, "v2v_len": v2v_frames * n, "memory_len": 4 * n}
    piece = {**sizes, "visual_len": p, "seq_len": p}
    assert select_profile(profiles, {t.name: t.shape(piece) for t in spec.inputs}) == 2
    whole = {**sizes, "visual_len": 4 * p, "seq_len": 4 * p, "v2v_len": 4 * n}
    with pytest.raises(UserError, match=rf"visual: visual_embeds dimension 1 is {4 * p}, not in"):
        select_profile(profiles, {t.name: t.shape(whole) for t in spec.inputs})


def test_profile_selection_per_chunk(llm):
    spec, dims, frame = llm
    profiles = derive_profiles(spec.inputs, dims, None, frame)
    p, n = frame.pooled, frame.memory

    def shapes(text, frames, past, memory_frames):
        v2v = frames * n if frames else 0
        sizes = {
            "text_len": text,
            "visual_len": frames * p,
            "seq_len": text + frames * p,
            "past_len": past,
            "v2v_len": v2v,
            "memory_len": memory_frames * n,
        }
        return {s.name: s.shape(sizes) for s in spec.inputs}

    assert select_profile(profiles, shapes(1, 0, 40, 4)) == 0  # decode
    assert select_profile(profiles, shapes(20, 0, 40, 4)) == 1  # a question
    assert select_profile(profiles, shapes(20, 4, 0, 4)) == 2  # the video prefix
    with pytest.raises(UserError, match=r"decode: past_key\.0 dimension 1 is 300, not in 0\.\.255"):
        select_profile(profiles, shapes(1, 0, 300, 4))


def test_limits_beyond_the_export_are_refused(llm):
    spec, dims, frame = llm
    with pytest.raises(UserError, match="exceed the package's export limits"):
        derive_profiles(spec.inputs, dims, ProfileLimits(8, 256), frame)
    smaller = derive_profiles(spec.inputs, dims, ProfileLimits(2, 128), frame)
    assert smaller[2].shapes["visual_embeds"][2][1] == 2 * frame.pooled


def test_onnx_runtime_options_repeat_inputs_per_profile(llm):
    spec, dims, _ = llm
    options = trt_profile_options(spec.inputs, dims)
    items = options["trt_profile_min_shapes"].split(",")
    assert len(items) == 3 * len(spec.inputs)  # three profiles, every input named in each
    # the old single profile's min point was inconsistent: ids 1x0, embeds 1x0xD, positions 1x1
    mins = dict(item.split(":") for item in items[: len(spec.inputs)])
    assert (mins["input_ids"], mins["position_ids"]) == ("1x1", "1x1")


RECORD = {
    "engine_record": 1,
    "tensorrt": "10.3.0.30",
    "gpu": "Orin",
    "compute_capability": "8.7",
    "version_compatible": False,
    "hardware_compatibility": "NONE",
    "plan_sha256": "ab",
}
ENV = {"tensorrt": "10.3.0.30", "gpu": "Orin", "compute_capability": "8.7"}


def test_engine_record_checks():
    assert mismatches(RECORD, ENV) == []
    assert "TensorRT 10.4.0.26" in mismatches(RECORD, {**ENV, "tensorrt": "10.4.0.26"})[0]
    newer = {**RECORD, "version_compatible": True}
    assert mismatches(newer, {**ENV, "tensorrt": "10.4.0.26"}) == []
    assert mismatches(newer, {**ENV, "tensorrt": "10.2.0.19"})
    assert (
        "RTX 4090" in mismatches(RECORD, {**ENV, "gpu": "RTX 4090", "compute_capability": "8.9"})[0]
    )
    ampere = {**RECORD, "hardware_compatibility": "AMPERE_PLUS"}
    assert mismatches(ampere, {**ENV, "gpu": "RTX 4090", "compute_capability": "8.9"}) == []
    with pytest.raises(UserError, match="does not match the sha256"):
        require_compatible(RECORD, ENV, "cd", "llm")
    with pytest.raises(UserError, match="rebuild for"):
        require_compatible(RECORD, {**ENV, "tensorrt": "10.7.0.23"}, "ab", "llm")


def test_jetson_release_is_read(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic\n")
    assert tegra_release(release) == {"l4t": "36.4.3", "jetpack": "6.2"}
    assert tegra_release(tmp_path / "missing") is None


def test_alignment_and_output_shapes():
    assert is_aligned(4096) and not is_aligned(4096 + 128)
    assert rows_stay_aligned(2 * 128 * 2)  # Qwen2.5-1.5B fp16: 512 bytes a row
    assert not rows_stay_aligned(2 * 32 * 2)  # the embedded model fp16: 128
    assert eval_dim("visual_len/4*64", {"visual_len": 12}) == 192
    spec = llm_spec(tiny_config(), ExportLimits(4, 256), "float16")
    shapes = {
        s.name: s.shape(
            {
                "text_len": 3,
                "visual_len": 8,
                "seq_len": 11,
                "past_len": 5,
                "v2v_len": 0,
                "memory_len": 16,
            }
        )
        for s in spec.inputs
    }
    sizes = bind_sizes(spec.inputs, shapes, {d.name: d for d in spec.dims})
    assert sizes["seq_len"] == 11
    with pytest.raises(ValueError, match="unsupported"):
        eval_dim("__import__('os')", {})
