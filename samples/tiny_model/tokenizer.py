"""The tiny model's word-level tokenizer and its Hugging Face side files.

Words come from the synthetic world's questions and answers and the ChatML
frame, so every prompt the world can ask tokenises without an unknown word.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

from crosslmm_edge.calibration.world import synthetic_world as world

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|video_pad|>")
UNKNOWN = "<unk>"
SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen2.5's ChatML, with Qwen2-VL's list content so a video item renders as
# the placeholder; a plain string content is used verbatim.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'video' %}{{- '<|video_pad|>\\n' }}"
    "{%- elif item['type'] == 'text' %}{{- item['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Whitespace()


def corpus_words() -> list[str]:
    """Every word the prompts and answers use, in first-seen order."""
    texts = [SYSTEM_PROMPT, "system user assistant", *world.answer_vocabulary()]
    texts += [q for phrasings in world.PHRASINGS.values() for q in phrasings]
    words: dict[str, None] = {}
    pre = _pre_tokenizer()
    for text in texts:
        for word, _ in pre.pre_tokenize_str(text.lower()):
            words[word] = None
    return list(words)


def build_tokenizer() -> Tokenizer:
    """A WordLevel tokenizer: special tokens first (ids 0..3), then ``<unk>``, then words."""
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, UNKNOWN, *corpus_words()))}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=UNKNOWN))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def token_id(tokenizer: Tokenizer, token: str) -> int:
    """The id of a token that must exist."""
    found = tokenizer.token_to_id(token)
    if found is None:
        raise KeyError(token)
    return found


def write_tokenizer_files(tokenizer: Tokenizer, out_dir: Path) -> None:
    """tokenizer.json, tokenizer_config.json (with chat template) and generation_config.json."""
    tokenizer.save(str(out_dir / "tokenizer.json"))
    added = {
        str(token_id(tokenizer, t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    config = {
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": UNKNOWN,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 512,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {
        "eos_token_id": [token_id(tokenizer, "<|im_end|>"), token_id(tokenizer, "<|endoftext|>")],
        "pad_token_id": token_id(tokenizer, "<|endoftext|>"),
        "do_sample": False,
        "max_new_tokens": 8,
    }
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
