"""Tokenizers a recipe can use: the model's own (Hugging Face), or a byte-level one for the built-in presets."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from dropbp.core.errors import ConfigError


class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    vocab_size: int
    eos_token_id: int
    pad_token_id: int
    start_ids: list[int]  # what the tokenizer puts before any text (Gemma's beginning-of-sequence; none for most)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens)."""

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``."""

    def chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str | None:
        """The conversation rendered with the tokenizer's chat template (``add_generation_prompt``: followed by the
        opening of an assistant turn), or None where it has none."""


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255; byte 0 (NUL, absent from text) doubles as end-of-sequence and padding."""

    vocab_size = 256
    eos_token_id = 0
    pad_token_id = 0
    start_ids: list[int] = []

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text``, with any NUL dropped (it is the end-of-sequence id)."""
        return [b for b in text.encode("utf-8") if b != 0]

    def decode(self, ids: list[int]) -> str:
        """Bytes back to text (invalid sequences replaced)."""
        return bytes(i for i in ids if 0 < i < 256).decode("utf-8", errors="replace")

    def chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str | None:
        """No chat template: conversations are rendered by the data pipeline's plain format."""
        return None


class HFTokenizer:
    """A Hugging Face tokenizer behind the :class:`Tokenizer` protocol (padding with end-of-sequence if it has no
    pad token)."""

    def __init__(self, tokenizer: Any) -> None:
        self.inner = tokenizer
        self.vocab_size = len(tokenizer)
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ConfigError(f"model.tokenizer {tokenizer.name_or_path!r} has no end-of-sequence token.")
        self.eos_token_id = int(eos)
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
        self.start_ids = start_ids(tokenizer)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without special tokens."""
        return list(self.inner.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``, special tokens dropped."""
        return str(self.inner.decode(ids, skip_special_tokens=True))

    def chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str | None:
        """The tokenizer's chat template applied to ``messages``, or None where it has none."""
        if not getattr(self.inner, "chat_template", None):
            return None
        return str(self.inner.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt))


def start_ids(tokenizer: Any) -> list[int]:
    """The ids a Hugging Face tokenizer puts before a text by default (``[<bos>]`` for Gemma, which reads text badly
    without it; ``[]`` for SmolLM2): its encoding of a text with special tokens, up to where the plain one begins."""
    plain = list(tokenizer.encode("x", add_special_tokens=False))
    full = list(tokenizer.encode("x"))
    head = full.index(plain[0]) if plain and plain[0] in full else 0
    return full[:head] if full[head:head + len(plain)] == plain else []


def load_tokenizer(spec: str, model_name: str, *, is_preset: bool, local_only: bool,
                   trust_remote_code: bool) -> Tokenizer:
    """The tokenizer a recipe names: ``byte``; ``auto`` (byte-level for presets, else the model's own); or a
    tokenizer folder / Hub name."""
    if spec == "byte" or (spec == "auto" and is_preset):
        return ByteTokenizer()
    from transformers import AutoTokenizer

    from dropbp.recipes.config.presets import source_of

    source = source_of(model_name if spec == "auto" else spec)
    try:
        inner = AutoTokenizer.from_pretrained(source, local_files_only=local_only,
                                              trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        where = "folder" if Path(source).exists() else "name"
        raise ConfigError(f"model.tokenizer: could not load a tokenizer from {where} {source!r}: "
                          f"{str(err).splitlines()[0]}") from None
    return HFTokenizer(inner)
