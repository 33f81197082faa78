"""Tokenizer and chat template, torch-free (spec section 3).

The chat template (Jinja, rendered as Hugging Face renders it) is rendered
with unique slot markers in place of the video placeholder and of the user's
text; the rendered string is then cut at the markers. Template text is
tokenized with control tokens recognised, user text with control-token
matching switched off, so a question can never smuggle in ``<|im_start|>`` or
``<|video_pad|>``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Tokenizer

from ..errors import UserError
from ..package.files import read_json

DEFAULT_SYSTEM = "You are a helpful assistant."
IM_START, IM_END, VIDEO_PAD = "<|im_start|>", "<|im_end|>", "<|video_pad|>"
CONTROL_TOKENS = (IM_START, IM_END, VIDEO_PAD)

# Qwen's ChatML, used when tokenizer_config.json carries no chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Markers rendered in place of the video, the user's text and an answer; no
# template produces them, and they never reach the tokenizer.
VIDEO_SLOT = "[[crosslmm-slot:video]]"
QUESTION_SLOT = "[[crosslmm-slot:question]]"
ANSWER_SLOT = "[[crosslmm-slot:answer]]"


def _token_text(value: object) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _template_source(model_dir: Path, tokenizer_config: dict) -> str:
    """The chat template: chat_template.jinja, else tokenizer_config.json's, else ChatML."""
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        try:
            return jinja_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read {jinja_file}: {exc}") from None
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}], older HF format
        named = {item.get("name"): item.get("template") for item in template}
        template = named.get("default")
    if template is None:
        return CHATML_TEMPLATE
    if not isinstance(template, str):
        raise UserError(f"chat_template in {model_dir / 'tokenizer_config.json'} is not a string")
    return template


def _compile_template(source: str, origin: Path) -> jinja2.Template:
    """Compile as transformers does: sandboxed, trim/lstrip blocks, tojson, raise_exception."""

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        # Jinja's own tojson escapes HTML characters; transformers' does not.
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
            sort_keys=sort_keys,
        )  # fmt: skip

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateError as exc:
        raise UserError(f"invalid chat template from {origin}: {exc}") from None


def _generation_eos_ids(path: Path) -> set[int]:
    """eos_token_id of generation_config.json (an int or a list of ints)."""
    eos = read_json(path).get("eos_token_id")
    ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise UserError(f"eos_token_id in {path} must be an int or a list of ints, got {eos!r}")
    return set(ids)


def _known_id(tokenizer: Tokenizer, token: str) -> int:
    """Id of a token the tokenizer holds: a control token (checked on load) or an added one."""
    token_id = tokenizer.token_to_id(token)
    if token_id is None:  # unreachable after PromptBuilder's load check; narrows the type
        raise UserError(f"the tokenizer lacks the token {token!r}")
    return token_id


def _cut(text: str, slots: Sequence[str], origin: Path) -> list[str]:
    """Split ``text`` at each slot marker, which must occur once each, in order."""
    pieces = []
    for slot in slots:
        if text.count(slot) != 1:
            raise UserError(f"the chat template of {origin} does not render message text verbatim")
        before, text = text.split(slot)
        pieces.append(before)
    return [*pieces, text]


class PromptBuilder:
    """Token ids of the ChatML conversation around one video (spec section 3)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: jinja2.Template,
        template_vars: dict[str, str],
        eos_ids: set[int],
        origin: Path,
    ) -> None:
        self._tokenizer = tokenizer
        self._template = template
        self._template_vars = template_vars
        self._origin = origin
        missing = [t for t in CONTROL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise UserError(f"{origin / 'tokenizer.json'} lacks the token(s) {', '.join(missing)}")
        # Re-adding as special (same ids) makes sure user text can never match them.
        tokenizer.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in CONTROL_TOKENS]
        )
        specials = [t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special]
        specials.sort(key=len, reverse=True)  # longest first, as the tokenizer matches
        self._special_split = re.compile("(" + "|".join(map(re.escape, specials)) + ")")
        self._control_ids = {_known_id(tokenizer, t) for t in specials}
        self._stop_ids = {_known_id(tokenizer, IM_END), *eos_ids}

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike) -> PromptBuilder:
        """Read tokenizer.json, tokenizer_config.json and generation_config.json."""
        folder = Path(model_dir)
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise UserError(f"missing tokenizer file: {tokenizer_file}")
        try:
            tokenizer = Tokenizer.from_file(os.fspath(tokenizer_file))
        except Exception as exc:  # tokenizers raises plain Exception on bad JSON
            raise UserError(f"cannot load {tokenizer_file}: {exc}") from None
        config = read_json(folder / "tokenizer_config.json")
        template = _compile_template(_template_source(folder, config), folder)
        template_vars = {
            key: text
            for key in ("bos_token", "eos_token", "unk_token", "pad_token")
            if (text := _token_text(config.get(key))) is not None
        }
        eos_ids = _generation_eos_ids(folder / "generation_config.json")
        eos = template_vars.get("eos_token")
        if eos and (eos_id := tokenizer.token_to_id(eos)) is not None:
            eos_ids.add(eos_id)
        return cls(tokenizer, template, template_vars, eos_ids, folder)

    # -- properties -------------------------------------------------------
    @property
    def video_token_id(self) -> int:
        """Id of ``<|video_pad|>``, the single placeholder of the visual span."""
        return _known_id(self._tokenizer, VIDEO_PAD)

    @property
    def stop_token_ids(self) -> set[int]:
        """Generation stops at any of these: ``<|im_end|>`` and the EOS ids."""
        return set(self._stop_ids)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    # -- rendering --------------------------------------------------------
    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The chat template applied to ``messages``, as Hugging Face renders it."""
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                tools=None,
                documents=None,
                **self._template_vars,
            )
        except jinja2.exceptions.TemplateError as exc:
            raise UserError(f"chat template of {self._origin} failed: {exc}") from None

    def first_turn_text(self, question: str, system: str | None = None) -> str:
        """The rendered first turn with the question in it (for inspection and tests)."""
        return self.render(self._first_turn(VIDEO_PAD + "\n" + question, system))

    def _first_turn(self, user_content: str, system: str | None) -> list[dict[str, str]]:
        # The system text is rendered inside the template, where control tokens count:
        # refuse them rather than let --system open or close turns.
        if system is not None and (found := self._special_split.search(system)):
            raise UserError(f"the system prompt contains the control token {found.group(0)!r}")
        return [
            {"role": "system", "content": DEFAULT_SYSTEM if system is None else system},
            {"role": "user", "content": user_content},
        ]

    def _first_turn_pieces(self, system: str | None) -> list[str]:
        """[before video, between video and question, after question]."""
        text = self.render(self._first_turn(VIDEO_SLOT + "\n" + QUESTION_SLOT, system))
        return _cut(text, [VIDEO_SLOT, QUESTION_SLOT], self._origin)

    # -- token ids ----------------------------------------------------------
    def video_prefix_ids(self, system: str | None = None) -> list[int]:
        """Every token before the video placeholder (system turn and user header)."""
        return self._encode([(self._first_turn_pieces(system)[0], False)])

    def first_question_ids(self, question: str, system: str | None = None) -> list[int]:
        """Every token after the placeholder, through the assistant header."""
        _, middle, suffix = self._first_turn_pieces(system)
        return self._encode([(middle, False), (question, True), (suffix, False)])

    def next_turn_ids(self, question: str, system: str | None = None) -> list[int]:
        """Tokens continuing a conversation after an answer that stopped at ``<|im_end|>``.

        That ``<|im_end|>`` was sampled but not fed back, so these start with it.
        """
        messages = [
            *self._first_turn(VIDEO_PAD + "\n", system),
            {"role": "assistant", "content": ANSWER_SLOT},
            {"role": "user", "content": QUESTION_SLOT},
        ]
        text = self.render(messages)
        _, between, suffix = _cut(text, [ANSWER_SLOT, QUESTION_SLOT], self._origin)
        return self._encode([(between, False), (question, True), (suffix, False)])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with special tokens left out."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    def _encode(self, pieces: Sequence[tuple[str, bool]]) -> list[int]:
        """Token ids of (text, is_user_text) pieces read as one string.

        Control tokens count only inside template text. Plain runs that span a
        piece boundary are tokenized together, as the whole string would be.
        """
        ids: list[int] = []
        plain = ""
        for text, is_user in pieces:
            parts = [text] if is_user else self._special_split.split(text)
            for position, part in enumerate(parts):
                if position % 2 == 0:
                    plain += part
                    continue
                ids += self._encode_plain(plain)
                ids.append(_known_id(self._tokenizer, part))
                plain = ""
        return ids + self._encode_plain(plain)

    def _encode_plain(self, text: str) -> list[int]:
        """Token ids of ``text`` with special-token matching switched off."""
        if not text:
            return []
        try:  # command-line bytes that are not UTF-8 arrive as lone surrogates
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UserError(
                f"text {text[max(0, exc.start - 10) : exc.end + 10]!r} is not valid UTF-8"
            ) from None
        self._tokenizer.encode_special_tokens = True
        try:
            ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        finally:
            self._tokenizer.encode_special_tokens = False
        if self._control_ids.intersection(ids):
            raise UserError("text maps to a control token; it cannot be tokenized safely")
        return ids
