"""``compose``: SigLIP + Qwen2 folders -> a CrossLMM checkpoint, or a clear refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import (  # single_thread: an autouse fixture
    write_tokenizer,
)

from crosslmm_edge.cli import main
from crosslmm_edge.export.checkpoints.checkpoint import load_checkpoint
from crosslmm_edge.export.checkpoints.compose import ComposeOptions, compose
from crosslmm_edge.runtime.chat.prompt import PromptBuilder
from crosslmm_edge.runtime.errors import UserError

transformers = pytest.importorskip("transformers")

VISION = dict(
    hidden_size=12,
    intermediate_size=20,
    num_hidden_layers=2,
    num_attention_heads=3,
    image_size=16,
    patch_size=4,
)


def _qwen2(vocab: int, tie: bool = False):
    torch.manual_seed(1)
    config = transformers.Qwen2Config(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
    )
    return transformers.Qwen2ForCausalLM(config)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A full SiglipModel folder, a SiglipVisionModel folder and a Qwen2 folder whose
    tokenizer lacks <|video_pad|> and whose vocabulary ends right before it."""
    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    full = transformers.SiglipModel(
        transformers.SiglipConfig(
            vision_config=VISION,
            text_config=dict(
                hidden_size=8,
                intermediate_size=8,
                num_hidden_layers=1,
                num_attention_heads=2,
                vocab_size=20,
                max_position_embeddings=8,
            ),
        )
    )
    full.save_pretrained(root / "siglip")
    transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION)).save_pretrained(
        root / "siglip_vision"
    )
    vocab = write_tokenizer(root / "qwen", with_video_token=False)
    _qwen2(vocab).save_pretrained(root / "qwen")
    return root / "siglip", root / "siglip_vision", root / "qwen"


def test_full_siglip_and_new_video_token(sources, tmp_path):
    siglip, _, qwen = sources
    out = compose(
        siglip,
        qwen,
        tmp_path / "ckpt",
        ComposeOptions(pooled_grid=2, dcal_every=2, v2v_scope="frame", dcal_mlp=True),
    )
    config = json.loads((out / "config.json").read_text())
    assert (config["v2v_scope"], config["dcal_mlp"], config["pooled_grid"]) == ("frame", True, 2)
    prompt = PromptBuilder.from_dir(out)  # the tokenizer now knows the placeholder
    source_vocab = json.loads((qwen / "config.json").read_text())["vocab_size"]
    assert prompt.video_token_id == source_vocab == config["video_token_id"]
    assert config["text_config"]["vocab_size"] == source_vocab + 1
    added = json.loads((out / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert added[str(prompt.video_token_id)]["content"] == "<|video_pad|>"
    # The grown rows of the embedding and the untied head are the mean rows.
    weights = load_file(out / "model.safetensors")
    source = load_file(qwen / "model.safetensors")
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        grown = weights["language_model." + key]
        assert torch.equal(grown[:-1], source[key])
        assert torch.allclose(grown[-1], source[key].mean(0))
    # Vision keys verbatim, SigLIP's text tower and pooling head dropped.
    full = load_file(siglip / "model.safetensors")
    assert torch.equal(
        weights["vision_model.post_layernorm.weight"], full["vision_model.post_layernorm.weight"]
    )
    assert not any(k.startswith(("text_model.", "vision_model.head.", "logit")) for k in weights)
    model = load_checkpoint(out)
    assert all(layer.mlp_gate.item() == 0 for layer in model.dcal)


def test_seed_fixes_fresh_weights(sources, tmp_path):
    _, vision, qwen = sources
    first = compose(vision, qwen, tmp_path / "a", ComposeOptions(seed=5, dcal_every=2))
    again = compose(vision, qwen, tmp_path / "b", ComposeOptions(seed=5, dcal_every=2))
    other = compose(vision, qwen, tmp_path / "c", ComposeOptions(seed=6, dcal_every=2))
    a, b, c = (load_file(p / "model.safetensors") for p in (first, again, other))
    key = "dcal.1.t2v_attn.q_proj.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


def test_existing_out_refused_unless_force(sources, tmp_path, capsys):
    _, vision, qwen = sources
    out = tmp_path / "ckpt"
    out.mkdir()
    args = ["compose", "--vision", str(vision), "--llm", str(qwen), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and str(out) in err[0]
    assert main([*args, "--force", "--dcal-every", "2"]) == 0
    assert load_checkpoint(out).config.dcal_every == 2


def test_swapped_folders_are_refused(sources, tmp_path, capsys):
    _, vision, qwen = sources
    args = ["compose", "--vision", str(qwen), "--llm", str(vision), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(qwen / "config.json") in err[0]
    assert not (tmp_path / "o").exists()


def test_failure_leaves_no_output(sources, tmp_path):
    _, vision, qwen = sources
    with pytest.raises(UserError, match="pooled_grid"):
        compose(vision, qwen, tmp_path / "o", ComposeOptions(pooled_grid=9))
    assert list(tmp_path.iterdir()) == []
