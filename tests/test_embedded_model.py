"""The embedded tiny CrossLMM: a spec checkpoint that really answers about video."""

from __future__ import annotations

import math

import pytest
from tiny_models import single_thread  # noqa: F401  (autouse: torch on 1 thread)

from crosslmm_edge.calibration.world import synthetic_world as world
from crosslmm_edge.calibration.world.evaluate import evaluate_assistant
from crosslmm_edge.export.checkpoints.checkpoint import load_checkpoint
from crosslmm_edge.export.reference.model import CrossLMM
from crosslmm_edge.export.reference.reference_assistant import ReferenceAssistant
from crosslmm_edge.models import embedded_model_dir
from crosslmm_edge.runtime.chat.prompt import PromptBuilder

FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
)
HELD_OUT_SEED = 7  # training used stream 0, validation stream 2


@pytest.fixture(scope="module")
def model() -> CrossLMM:
    return load_checkpoint(embedded_model_dir())


def test_the_embedded_model_is_a_small_spec_checkpoint(model):
    folder = embedded_model_dir()
    assert all((folder / name).is_file() for name in FILES)
    assert sum((folder / name).stat().st_size for name in FILES) < 8_000_000
    config = model.config
    assert (config.pooled_grid, config.dcal_every, config.v2v_scope) == (2, 2, "video")
    assert config.num_dcal == 2
    assert set(model.state_dict()) == set(CrossLMM(config).state_dict())


def test_training_opened_the_dcal_gates(model):
    gates = [math.tanh(p.item()) for n, p in model.named_parameters() if n.endswith("_gate")]
    assert max(abs(g) for g in gates) > 0.05  # the cross-attention is in use


def test_every_question_tokenizes_without_unknown_words():
    prompt = PromptBuilder.from_dir(embedded_model_dir())
    unknown = prompt._tokenizer.token_to_id("<unk>")
    for phrasings in world.PHRASINGS.values():
        for question in phrasings:
            assert unknown not in prompt.first_question_ids(question)
    for word in world.answer_vocabulary():
        ids = prompt._tokenizer.encode(word, add_special_tokens=False).ids
        assert len(ids) == 1 and prompt.decode(ids) == word


def test_accuracy_on_held_out_videos_stays_high():
    result = evaluate_assistant(ReferenceAssistant(embedded_model_dir()), 32, HELD_OUT_SEED)
    assert result.accuracy >= 0.9, result.per_type
    assert min(result.per_type.values()) >= 0.75, result.per_type
