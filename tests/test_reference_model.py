"""The reference model's cache, pooling and sampling agree with their slow definitions."""

from __future__ import annotations

import pytest
import torch
from tiny_models import (  # single_thread: an autouse fixture
    tiny_config,
    tiny_model,
)

from crosslmm_edge.export.dcal import CrossKV
from crosslmm_edge.export.generate import (
    decode_step,
    generate,
    new_cache,
    prefill,
    prefill_video_prefix,
)
from crosslmm_edge.export.projector import pool_tokens, pooling_matrix
from crosslmm_edge.runtime.inference.sampling import Sampler

TOL = 1e-5


def _video(model, frames: int = 3, seed: int = 1):
    size = model.config.vision_config.image_size
    pixels = torch.randn(frames, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.encode_video(pixels)


def _ids(count: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (1, count), generator=torch.Generator().manual_seed(seed))


CASES = [
    pytest.param({"v2v_scope": "video"}, id="video"),
    pytest.param({"v2v_scope": "frame"}, id="frame"),
    pytest.param({"v2v_scope": "frame", "dcal_mlp": True, "tie": False}, id="frame-mlp"),
    pytest.param({"v2v_scope": "video", "dcal_mlp": True, "heads": 6, "kv_heads": 1}, id="gqa6"),
]


@pytest.mark.parametrize("options", CASES)
def test_decode_steps_equal_one_forward(options):
    model = tiny_model(tiny_config(**options), gates=0.7)
    assert all(layer.t2v_gate.item() != 0 for layer in model.dcal)
    video = _video(model)
    text = _ids(12, seed=2)  # question + answer tokens after the video prefix
    cache = new_cache(model, 128)
    prefill_video_prefix(model, cache, _ids(5, seed=3), video)
    prefix_length = cache.length
    full = prefill(model, cache, text, video.cross)[0]  # [12, V] in one forward
    cache.truncate(prefix_length)
    steps = [prefill(model, cache, text[:, :4], video.cross)[0]]
    steps += [decode_step(model, cache, text[:, i : i + 1], video.cross) for i in range(4, 12)]
    stepped = torch.cat(steps)  # [12, V]
    assert (full - stepped).abs().max() <= TOL
    # The DCAL gates matter: zero gates give other logits.
    for layer in model.dcal:
        layer.t2v_gate.data.zero_()
    cache.truncate(prefix_length)
    assert (prefill(model, cache, text, video.cross)[0] - full).abs().max() > 1e-3


@pytest.mark.parametrize("scope", ["video", "frame"])
def test_prefix_split_at_the_visual_span(scope):
    model = tiny_model(tiny_config(v2v_scope=scope), gates=0.7)
    video = _video(model)
    prefix = _ids(5, seed=3)
    one = new_cache(model, 64)
    prefill_video_prefix(model, one, prefix, video)
    two = new_cache(model, 64)
    prefill(model, two, prefix, video.cross)  # text alone (T2V only)
    prefill(model, two, prefix[:, :0], video.cross, video.visual_embeds)  # then the visual span
    for (k1, v1), (k2, v2) in zip(one.past(), two.past(), strict=True):
        assert (k1 - k2).abs().max() <= TOL and (v1 - v2).abs().max() <= TOL


def _frames_cross(cross: list[CrossKV], start: int, stop: int, per_frame: int) -> list[CrossKV]:
    span = slice(start * per_frame, stop * per_frame)
    return [
        CrossKV(c.v2v_key[:, span], c.v2v_value[:, span], c.t2v_key, c.t2v_value) for c in cross
    ]


def test_frame_scope_appended_chunks_equal_one_chunk():
    config = tiny_config(v2v_scope="frame", dcal_mlp=True)
    model = tiny_model(config, gates=0.7)
    video = _video(model, frames=3)
    per_token, per_frame = config.tokens_per_frame, config.vision_config.num_patches
    prefix, question = _ids(5, seed=3), _ids(6, seed=4)
    one = new_cache(model, 64)
    prefill_video_prefix(model, one, prefix, video)
    logits_one = prefill(model, one, question, video.cross)
    two = new_cache(model, 64)
    first = video.visual_embeds[:, : 2 * per_token]
    prefill(model, two, prefix, _frames_cross(video.cross, 0, 2, per_frame), first)
    rest = video.visual_embeds[:, 2 * per_token :]
    prefill(model, two, prefix[:, :0], _frames_cross(video.cross, 2, 3, per_frame), rest)
    logits_two = prefill(model, two, question, video.cross)
    assert (logits_one - logits_two).abs().max() <= TOL


@pytest.mark.parametrize("mode", ["bilinear", "avg"])
@pytest.mark.parametrize("side", [7, 8])
def test_pooling_matrix_equals_pool_tokens(mode, side):
    features = torch.randn(3, side * side, 5, dtype=torch.float64)
    for grid in (1, 2, 3, 4):
        matrix = pooling_matrix(side * side, grid, mode)  # [g², N]
        expected = pool_tokens(features, grid, mode)
        assert (torch.einsum("pn,fnd->fpd", matrix, features) - expected).abs().max() < 1e-12


def _generate(model, video, sampler: Sampler, steps: int = 12) -> list[int]:
    cache = new_cache(model, 128)
    prefill_video_prefix(model, cache, _ids(5, seed=3), video)
    prompt = _ids(4, seed=5)[0].tolist()
    out = generate(model, cache, video.cross, prompt, steps, stop_ids=[], sampler=sampler)
    return [token for token, _ in out]


def test_sampling_seeded_and_top_k_one_is_greedy():
    model = tiny_model(tiny_config(), gates=0.7)
    video = _video(model)
    sampled = _generate(model, video, Sampler(temperature=1.5, top_p=0.95, seed=7))
    assert sampled == _generate(model, video, Sampler(temperature=1.5, top_p=0.95, seed=7))
    assert sampled != _generate(model, video, Sampler(temperature=1.5, top_p=0.95, seed=8))
    greedy = _generate(model, video, Sampler())
    assert _generate(model, video, Sampler(temperature=2.0, top_k=1, seed=3)) == greedy
    assert sampled != greedy


@pytest.mark.parametrize(("heads", "kv_heads", "batch"), [(4, 2, 1), (6, 1, 1), (4, 4, 2)])
def test_sdpa_attention_equals_full_attention(heads: int, kv_heads: int, batch: int) -> None:
    """The fused-kernel DCAL attention (GPU benchmarks) computes what the exported one does."""
    from crosslmm_edge.export.attention import full_attention, sdpa_attention

    gen = torch.Generator().manual_seed(3)
    q = torch.randn(batch, 7, heads, 8, generator=gen)
    k, v = (torch.randn(batch, 29, kv_heads, 8, generator=gen) for _ in range(2))
    want, got = full_attention(q, k, v), sdpa_attention(q, k, v)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(sdpa_attention(q, k, v.flip(1)), want, atol=1e-3)  # v matters


def test_injected_cross_attention_gives_the_same_model() -> None:
    from crosslmm_edge.export.attention import sdpa_attention
    from crosslmm_edge.export.model import CrossLMM

    config = tiny_config(v2v_scope="video")
    torch.manual_seed(0)
    plain = CrossLMM(config).eval()
    fused = CrossLMM(config, cross_attention=sdpa_attention).eval()
    fused.load_state_dict(plain.state_dict())
    for layer in [*plain.dcal, *fused.dcal]:  # open the zero-initialised gates
        torch.nn.init.constant_(layer.v2v_gate, 0.5)
        torch.nn.init.constant_(layer.t2v_gate, 0.5)
    video = _video(plain)
    ids = _ids(5, 2)
    positions = torch.arange(ids.shape[1] + video.visual_embeds.shape[1])[None]
    with torch.no_grad():
        want, _ = plain(ids, video.visual_embeds, positions, plain.empty_past(), video.cross)
        got, _ = fused(ids, video.visual_embeds, positions, fused.empty_past(), video.cross)
    assert fused.dcal[0].t2v_attn.attend is sdpa_attention
    assert torch.allclose(got, want, atol=1e-4)
