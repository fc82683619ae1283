"""Recipe data: records loaded with ``datasets``, rendered as prompts and answers, tokenized, and cut into fixed-length
windows (packed, or one example per window padded to the length). Batches are a pure function of (seed, step), so
a resumed run sees the same data as an uninterrupted one."""
from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from dropbp.core.errors import ConfigError
from dropbp.recipes.config.presets import check_hub_access, hub_id
from dropbp.recipes.config.schema import DataSection, resolve_data_path
from dropbp.recipes.data.order import order_generator
from dropbp.recipes.data.tokenizers import Tokenizer

IGNORE = -100  # label of a token left out of the loss
ALPACA_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n"
                     "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def load_records(source: str, base: Path, field: str) -> list[dict[str, Any]]:
    """Records from a JSON/JSONL file (through ``datasets``, kept in memory) or, with downloads allowed, a Hugging
    Face dataset ``hf:org/name``."""
    import datasets

    datasets.disable_progress_bars()
    path = resolve_data_path(source, base)
    with tempfile.TemporaryDirectory(prefix="dropbp-datasets-") as cache:
        try:
            if hub_id(source) is not None:
                check_hub_access(source, field)
                loaded = datasets.load_dataset(hub_id(source), split="train", keep_in_memory=True, cache_dir=cache)
            elif path.is_file():
                check_text_file(path, field)
                loaded = datasets.load_dataset("json", data_files=str(path), split="train", keep_in_memory=True,
                                               cache_dir=cache)
            else:
                raise ConfigError(f"{field}: no such file {path}.")
            records = [dict(row) for row in loaded]
        except ConfigError:
            raise
        except (ValueError, OSError, StopIteration, datasets.exceptions.DatasetGenerationError) as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"{field}: could not read {source}: {reason}") from None
    if not records:
        raise ConfigError(f"{field}: {source} holds no records.")
    return records


def check_text_file(path: Path, field: str) -> None:
    """A local data file is UTF-8 text with something in it (else one message naming ``field``)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{field}: {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                          "save it as UTF-8.") from None
    if not text.strip():
        raise ConfigError(f"{field}: {path} is empty; it needs one JSON record per line (or a JSON list).")


def _text(record: dict[str, Any], key: str, field: str, *, optional: bool = False) -> str:
    """A record's text field: a string (a number is written out); null only where ``optional`` (as empty)."""
    value = record.get(key)
    if value is None and optional:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{field}: the record field {key!r} must be text, got {type(value).__name__} "
                          f"({str(value)[:40]!r}); fix or drop that record.")
    return str(value)


def chat_prompt(user: str, spec: DataSection, tokenizer: Tokenizer) -> str:
    """One user turn through the tokenizer's chat template, opening the assistant's turn (after the recipe's system
    message, where it gives one; else the template's own default)."""
    system = [] if spec.system_prompt is None else [{"role": "system", "content": spec.system_prompt}]
    prompt = tokenizer.chat(system + [{"role": "user", "content": user}], add_generation_prompt=True)
    if prompt is None:
        raise ConfigError("data.template chat needs a tokenizer with a chat template, and this one has none (a "
                          "preset's byte-level tokenizer never has one); use template alpaca or plain, or a model "
                          "whose tokenizer has a chat template.")
    return prompt


def render(record: dict[str, Any], spec: DataSection, tokenizer: Tokenizer, field: str) -> tuple[str, str]:
    """(prompt, answer) text of one record in the recipe's format."""
    if spec.columns:
        record = {**record, **{name: record[source] for name, source in spec.columns.items() if source in record}}
    if spec.format == "alpaca":
        if "instruction" not in record or "output" not in record:
            raise ConfigError(f"{field}: alpaca records need 'instruction' and 'output' (and optionally 'input'); "
                              f"got keys {sorted(record)}.")
        extra = _text(record, "input", field, optional=True)
        instruction = _text(record, "instruction", field)
        if spec.template == "plain":
            prompt = f"{instruction}\n{extra}\n" if extra else f"{instruction}\n"
        elif spec.template == "chat":
            prompt = chat_prompt(f"{instruction}\n{extra}" if extra else instruction, spec, tokenizer)
        else:
            template = ALPACA_WITH_INPUT if extra else ALPACA_NO_INPUT
            prompt = template.format(instruction=instruction, input=extra)
        return prompt, _text(record, "output", field)
    if spec.format == "chat":
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ConfigError(f"{field}: chat records need a non-empty 'messages' list of {{role, content}}.")
        if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            raise ConfigError(f"{field}: each chat message must be a mapping {{role, content}} with text content; "
                              f"got {str(messages)[:60]!r}.")
        last = len(messages) - 1 if messages[-1].get("role") == "assistant" else len(messages)
        head = tokenizer.chat(messages[:last]) if last < len(messages) else None
        full = tokenizer.chat(messages)
        if full is None:  # no chat template: a plain "role: content" rendering
            lines = [f"{m.get('role', 'user')}: {m.get('content', '')}\n" for m in messages]
            return "".join(lines[:last]) + ("assistant: " if last < len(messages) else ""), \
                (str(messages[-1].get("content", "")) if last < len(messages) else "")
        if head is not None and full.startswith(head):
            return head, full[len(head):]
        return "", full
    if "text" not in record:
        raise ConfigError(f"{field}: text records need a 'text' field; got keys {sorted(record)}.")
    return "", _text(record, "text", field)


@dataclass
class Tokenized:
    """One example: its token ids and labels (``IGNORE`` where the loss leaves a token out)."""

    ids: list[int]
    labels: list[int]


def tokenize(records: list[dict[str, Any]], spec: DataSection, tokenizer: Tokenizer, field: str) -> list[Tokenized]:
    """The tokenizer's start ids (if any) + prompt + answer + end-of-sequence per record; the prompt is masked in the
    labels when ``mask_prompt``."""
    examples = []
    for record in records:
        prompt, answer = render(record, spec, tokenizer, field)
        prompt_ids = tokenizer.encode(prompt) if prompt else []
        answer_ids = tokenizer.encode(answer) + [tokenizer.eos_token_id]
        start = list(tokenizer.start_ids)
        ids = start + prompt_ids + answer_ids
        labels = [IGNORE] * len(start) + ([IGNORE] * len(prompt_ids) if spec.mask_prompt else list(prompt_ids)) \
            + answer_ids
        examples.append(Tokenized(ids, labels))
    return examples


def to_windows(examples: list[Tokenized], seq_len: int, packing: bool, pad_id: int) -> tuple[torch.Tensor,
                                                                                            torch.Tensor]:
    """``(input_ids, labels)`` of shape ``(windows, seq_len)``: packed back to back, or one example per window
    (truncated, then padded with ``pad_id`` and ``IGNORE`` labels)."""
    if packing:
        ids = [i for e in examples for i in e.ids]
        labels = [label for e in examples for label in e.labels]
        count = len(ids) // seq_len
        if count == 0:
            raise ConfigError(f"data: {len(ids)} tokens in all make no window of data.seq_len {seq_len}; lower it.")
        return (torch.tensor(ids[:count * seq_len]).view(count, seq_len),
                torch.tensor(labels[:count * seq_len]).view(count, seq_len))
    rows, label_rows = [], []
    for example in examples:
        ids, labels = example.ids[:seq_len], example.labels[:seq_len]
        pad = seq_len - len(ids)
        rows.append(ids + [pad_id] * pad)
        label_rows.append(labels + [IGNORE] * pad)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(label_rows, dtype=torch.long)


class WindowOrder:
    """Window ``k`` of the training stream (k = 0, 1, ...): epochs of seeded permutations, a pure function of k."""

    def __init__(self, count: int, seed: int) -> None:
        self.count, self.seed = count, seed
        self._permutation = lru_cache(maxsize=2)(self._make)

    def _make(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.count, generator=order_generator(self.seed, epoch))

    def indices(self, start: int, size: int) -> list[int]:
        """Window indices ``start .. start + size - 1`` of the stream."""
        return [int(self._permutation(k // self.count)[k % self.count]) for k in range(start, start + size)]


@dataclass
class RecipeData:
    """Training and validation windows, and the held-out records the exact-match evaluation uses."""

    train_ids: torch.Tensor
    train_labels: torch.Tensor
    val_ids: torch.Tensor
    val_labels: torch.Tensor
    val_records: list[dict[str, Any]]
    train_examples: int
    order: WindowOrder

    def batch(self, step: int, micro: int, grad_accum: int, size: int, rank: int = 0,
              world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank ``rank``'s share (``size`` windows) of micro-batch ``micro`` of optimizer step ``step``; the ranks
        together take the same ``size * world`` windows one process with micro-batch ``size * world`` would."""
        start = (step * grad_accum + micro) * size * world + rank * size
        index = torch.tensor(self.order.indices(start, size))
        return self.train_ids[index], self.train_labels[index]

    def fingerprint(self) -> str:
        """sha256 of every training and validation window and label (what a resume must see unchanged)."""
        digest = hashlib.sha256()
        for tensor in (self.train_ids, self.train_labels, self.val_ids, self.val_labels):
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()


def load_data(spec: DataSection, base: Path, tokenizer: Tokenizer, seed: int) -> RecipeData:
    """Everything a run needs from its data section."""
    records = load_records(spec.train, base, "data.train")
    if spec.validation is not None:
        val_records = load_records(spec.validation, base, "data.validation")
    else:
        generator = torch.Generator().manual_seed(spec.split_seed)
        shuffled = [records[i] for i in torch.randperm(len(records), generator=generator).tolist()]
        held = max(1, int(round(len(records) * spec.validation_fraction)))
        if held >= len(records):
            raise ConfigError(f"data.train has {len(records)} records: too few to hold out a validation share.")
        val_records, records = shuffled[:held], shuffled[held:]
    if spec.max_examples is not None:
        records = records[:spec.max_examples]
    train_ids, train_labels = to_windows(tokenize(records, spec, tokenizer, "data.train"), spec.seq_len,
                                         spec.packing, tokenizer.pad_token_id)
    val_ids, val_labels = to_windows(tokenize(val_records, spec, tokenizer, "data.validation"), spec.seq_len,
                                     spec.packing, tokenizer.pad_token_id)
    return RecipeData(train_ids, train_labels, val_ids, val_labels, val_records, len(records),
                      WindowOrder(len(train_ids), seed))
