"""Parity with the implementations nobody here wrote (transformers' SigLIP and Qwen2).

Tiny random ``SiglipVisionModel`` and ``Qwen2ForCausalLM`` are saved with
``save_pretrained``, composed by the ``compose`` command, and the composed
checkpoint is compared with the originals: vision features, LLM logits with
DCAL at identity, and ``ask``'s greedy tokens against a greedy loop over
``Qwen2ForCausalLM`` fed the same ``inputs_embeds``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import (  # single_thread: an autouse fixture
    write_test_video,
    write_tokenizer,
)

from crosslmm_edge.cli import main
from crosslmm_edge.export.checkpoints.checkpoint import load_checkpoint
from crosslmm_edge.export.reference.generate import text_only
from crosslmm_edge.export.reference.projector import pool_tokens
from crosslmm_edge.runtime.chat.prompt import PromptBuilder
from crosslmm_edge.runtime.video.decode import load_video

transformers = pytest.importorskip("transformers")

TOL = 1e-4
CASES = {
    # GQA 1, tied head, odd vision width 21, 28 px / patch 4 = 7×7 grid
    "gqa1-tied-7x7": dict(
        heads=4,
        kv=4,
        head_dim=8,
        tie=True,
        v_hidden=21,
        v_heads=3,
        image=28,
        patch=4,
        video_token=True,
        grid=3,
    ),
    # GQA 2, untied head, 32 px / patch 4 = 8×8, tokenizer without <|video_pad|>
    "gqa2-untied-8x8": dict(
        heads=4,
        kv=2,
        head_dim=10,
        tie=False,
        v_hidden=24,
        v_heads=4,
        image=32,
        patch=4,
        video_token=False,
        grid=2,
    ),
    # GQA 7, width 7×6 = 42, odd vision width 27, 16 px / patch 2 = 8×8
    "gqa7-42-tied-8x8": dict(
        heads=7,
        kv=1,
        head_dim=6,
        tie=True,
        v_hidden=27,
        v_heads=3,
        image=16,
        patch=2,
        video_token=True,
        grid=1,
    ),
}


def _hf_models(case: dict, vocab: int):
    torch.manual_seed(0)
    vision = transformers.SiglipVisionConfig(
        hidden_size=case["v_hidden"],
        intermediate_size=2 * case["v_hidden"] + 3,
        num_hidden_layers=3,
        num_attention_heads=case["v_heads"],
        image_size=case["image"],
        patch_size=case["patch"],
        attn_implementation="eager",
    )
    text = transformers.Qwen2Config(
        vocab_size=vocab,
        hidden_size=case["heads"] * case["head_dim"],
        intermediate_size=37,
        num_hidden_layers=4,
        num_attention_heads=case["heads"],
        num_key_value_heads=case["kv"],
        tie_word_embeddings=case["tie"],
        initializer_range=0.2,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attn_implementation="eager",
    )
    return (
        transformers.SiglipVisionModel(vision).eval(),
        transformers.Qwen2ForCausalLM(text).eval(),
    )


@pytest.fixture(scope="module", params=list(CASES))
def composed(request, tmp_path_factory):
    """(case, HF vision model, HF LLM, composed checkpoint folder)."""
    case = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    vocab = write_tokenizer(root / "llm", with_video_token=case["video_token"])
    hf_vision, hf_llm = _hf_models(case, vocab)
    hf_vision.save_pretrained(root / "vision")
    hf_llm.save_pretrained(root / "llm")
    args = [
        "compose",
        "--vision",
        str(root / "vision"),
        "--llm",
        str(root / "llm"),
        "--out",
        str(root / "ckpt"),
        "--pooled-grid",
        str(case["grid"]),
        "--dcal-every",
        "2",
        "--frames",
        "3",
    ]
    assert main(args) == 0
    return case, hf_vision, hf_llm, root / "ckpt"


def test_compose_layout(composed):
    _, _, hf_llm, folder = composed
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "crosslmm" and config["dcal_every"] == 2
    prompt = PromptBuilder.from_dir(folder)
    assert config["video_token_id"] == prompt.video_token_id
    vocab = hf_llm.config.vocab_size
    assert config["text_config"]["vocab_size"] == max(vocab, prompt.video_token_id + 1)
    assert (folder / "generation_config.json").is_file()
    model = load_checkpoint(folder)
    assert all(layer.t2v_gate.item() == 0 and layer.v2v_gate.item() == 0 for layer in model.dcal)
    assert not any(k.startswith("vision_model.head.") for k in model.state_dict())


@torch.no_grad()
def test_vision_matches_siglip(composed):
    case, hf_vision, _, folder = composed
    model = load_checkpoint(folder)
    pixels = torch.randn(2, 3, case["image"], case["image"])
    reference = hf_vision(pixel_values=pixels, output_hidden_states=True)
    grid = case["image"] // case["patch"]
    ours = model.encode_frames(pixels)
    assert ours.shape == (2, grid * grid, case["v_hidden"])
    error = float((ours - reference.last_hidden_state).abs().max())
    print(f"vision vs SiglipVisionModel: max abs {error:.1e}")  # docs/performance.md quotes it (-s)
    assert error <= TOL
    for layer in (1, -2):  # LLaVA's vision_feature_layer: a hidden state, no post-layernorm
        model.vision_model.feature_layer = layer
        ours = model.encode_frames(pixels)
        assert (ours - reference.hidden_states[layer]).abs().max() <= TOL


@torch.no_grad()
def test_llm_with_identity_dcal_matches_qwen2(composed):
    case, _, hf_llm, folder = composed
    model = load_checkpoint(folder)
    size = case["image"]
    video = model.encode_video(torch.randn(2, 3, size, size))
    ids = torch.randint(0, hf_llm.config.vocab_size, (1, 17))
    positions = torch.arange(17).unsqueeze(0)
    no_visual = torch.zeros(1, 0, model.config.text_config.hidden_size)
    ours, _ = model(ids, no_visual, positions, model.empty_past(), text_only(video.cross))
    reference = hf_llm(input_ids=ids).logits
    error = float((ours[..., : hf_llm.config.vocab_size] - reference).abs().max())
    print(f"logits vs Qwen2ForCausalLM: max abs {error:.1e}")  # docs/performance.md quotes it (-s)
    assert error <= TOL
    # The visual span enters as inputs_embeds at the end of a chunk.
    ours, _ = model(
        ids,
        video.visual_embeds,
        torch.arange(17 + video.visual_embeds.shape[1])[None],
        model.empty_past(),
        video.cross,
    )
    embeds = torch.cat([hf_llm.get_input_embeddings()(ids), video.visual_embeds], dim=1)
    reference = hf_llm(inputs_embeds=embeds).logits
    assert (ours[..., : hf_llm.config.vocab_size] - reference).abs().max() <= TOL


@torch.no_grad()
def _qwen2_greedy(hf_vision, hf_llm, model, prompt, video: Path, question: str, steps: int):
    """Greedy tokens of Qwen2ForCausalLM on [prefix ; visual ; question] inputs_embeds."""
    config = model.config
    frames = torch.from_numpy(load_video(video, config.num_frames, config.vision_config.image_size))
    features = hf_vision(pixel_values=frames).last_hidden_state  # [T, N, Dv]
    pooled = pool_tokens(features, config.pooled_grid, config.pool_mode)
    visual = model.projector(pooled).reshape(1, -1, config.text_config.hidden_size)
    embed = hf_llm.get_input_embeddings()
    embeds = torch.cat(
        [
            embed(torch.tensor([prompt.video_prefix_ids()])),
            visual,
            embed(torch.tensor([prompt.first_question_ids(question)])),
        ],
        dim=1,
    )
    tokens = []
    for _ in range(steps):
        logits = hf_llm(inputs_embeds=embeds).logits[0, -1]
        if config.video_token_id < logits.shape[0]:
            logits[config.video_token_id] = float("-inf")  # as the spec: never generated
        token = int(logits.argmax())
        if token in prompt.stop_token_ids:
            break
        tokens.append(token)
        embeds = torch.cat([embeds, embed(torch.tensor([[token]]))], dim=1)
    return tokens


def test_ask_equals_qwen2_greedy(composed, tmp_path, capsys):
    _, hf_vision, hf_llm, folder = composed
    video = write_test_video(tmp_path / "clip.mp4", frames=5, size=20)
    question = "What moves?"
    code = main(
        [
            "ask",
            str(folder),
            "--video",
            str(video),
            "--question",
            question,
            "--max-new-tokens",
            "12",
            "--json",
        ]
    )
    assert code == 0
    answer = json.loads(capsys.readouterr().out)["answers"][0]
    model = load_checkpoint(folder)
    prompt = PromptBuilder.from_dir(folder)
    expected = _qwen2_greedy(hf_vision, hf_llm, model, prompt, video, question, 12)
    assert len(expected) >= 10
    assert answer["token_ids"] == expected
