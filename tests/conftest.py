"""Shared fixtures: small artefacts built on the spot (no model hub here).

Sections: tokenizer files; the embedded model exported once per session. Keep each
fixture small and fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

# The TensorRT tests' `exported` and `package` fixtures (the embedded model in fp16).
pytest_plugins = ["fake_trt.packages"]

# -- tokenizer files ------------------------------------------------------

# Qwen2.5-Instruct's chat template without its tool-calling branches.
QWEN_CHAT_TEMPLATE = """\
{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""  # noqa: E501

CORPUS = [
    "You are a helpful assistant.",
    "What colour is the small dot? Which way does the red square move?",
    "The circle is blue and moves left; the dot is green.",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

WriteTokenizer = Callable[..., Path]


def write_tokenizer(
    folder: Path, chat_template: str | None = QWEN_CHAT_TEMPLATE, video_pad_special: bool = True
) -> Path:
    """Write a tiny byte-level BPE tokenizer.json (Qwen's layout of special
    tokens), tokenizer_config.json and generation_config.json into ``folder``.

    ``chat_template=None`` leaves the template out (ChatML fallback);
    ``video_pad_special=False`` adds ``<|video_pad|>`` as a plain added token,
    as a careless conversion might.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.add_tokens([AddedToken("<|video_pad|>", special=video_pad_special, normalized=False)])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    eos_ids = [tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")]
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_ids}))
    return folder


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    """A folder holding tiny Qwen-style tokenizer files (see ``write_tokenizer``)."""
    return write_tokenizer(tmp_path / "tokenizer")


@pytest.fixture
def write_tokenizer_files() -> WriteTokenizer:
    """``write_tokenizer(folder, ...)``, for tests that put tokenizer files in their own folder."""
    return write_tokenizer


@pytest.fixture(scope="session")
def embedded_fp16_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded model exported with fp32 and fp16 graphs, once per session.

    Shared by the INT8 and INT4 TensorRT-graph tests: copy it before changing it.
    """
    from crosslmm_edge.export.graphs.package import export_package
    from crosslmm_edge.models import embedded_model_dir

    folder = tmp_path_factory.mktemp("embedded16") / "pkg"
    export_package(embedded_model_dir(), folder, precisions=("fp32", "fp16"))
    return folder
