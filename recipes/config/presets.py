"""Model presets built in code with random weights (no download): a tiny CPU model and the paper's real shapes."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


from dropbp.core.errors import ConfigError
from dropbp.recipes.config.gguf_source import (GGUF_PREFIX, NAMED_MODELS, cached_source, check_gguf, gguf_source,
                                               is_gguf)

# Llama-architecture shapes. 'tiny' is sized to be compute-bound on a 2-core CPU; the others are the real shapes
# of the models in the paper (random weights: timing and memory depend on shape, not on the values).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=256),
    # Paper-shaped but CPU-sized: Llama2-70B's depth (80 layers) and ratios (MLP 3.5x, grouped kv heads 1:8,
    # vocabulary 4x the width), at width 64, for memory studies where depth decides the saving.
    "deep": dict(hidden_size=64, intermediate_size=224, num_hidden_layers=80, num_attention_heads=8,
                 num_key_value_heads=1, vocab_size=256),
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000),
    "llama2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                       num_key_value_heads=40, vocab_size=32000),
    "llama2-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                       num_key_value_heads=8, vocab_size=32000),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
}
METHODS: tuple[str, ...] = ("full", "lora", "qlora")
def llama_config(preset: str, **overrides: Any) -> Any:
    """A ``LlamaConfig`` for a named preset, with optional field overrides."""
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise ConfigError(f"model preset must be one of {', '.join(PRESETS)} (or a local path), got {preset!r}.")
    fields = {"max_position_embeddings": 8192, "attention_dropout": 0.0, **PRESETS[preset], **overrides}
    return LlamaConfig(**fields)


#: Shape fields of a preset that must be positive integers.
SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "max_position_embeddings", "head_dim")
#: The largest model a preset may be made into (parameters): beyond anything a recipe trains.
MAX_PRESET_PARAMETERS = 10**12


def preset_parameters(fields: dict[str, Any]) -> int:
    """About how many parameters a Llama of these shape fields has (embedding and head counted apart)."""
    hidden, layers = fields["hidden_size"], fields["num_hidden_layers"]
    head_dim = fields.get("head_dim") or hidden // fields["num_attention_heads"]
    attention = hidden * head_dim * (2 * fields["num_attention_heads"] + 2 * fields["num_key_value_heads"])
    return layers * (attention + 3 * hidden * fields["intermediate_size"]) + 2 * fields["vocab_size"] * hidden


def check_preset_config(preset: str, config: Any, field: str = "model.config") -> None:
    """``config`` changes a preset's known fields, to values a model can have: shape fields positive integers,
    the width divisible by the heads and the heads by the key-value heads, and at most
    :data:`MAX_PRESET_PARAMETERS` parameters (the count is named). One :class:`ConfigError` at the first problem."""
    from transformers import LlamaConfig

    if not isinstance(config, dict):
        raise ConfigError(f"{field} must be a mapping of preset fields to values, got {type(config).__name__}.")
    known = set(LlamaConfig().to_dict()) | set(SHAPE_FIELDS)
    unknown = sorted(str(k)[:40] for k in config if k not in known)
    if unknown:
        raise ConfigError(f"{field} has unknown fields {', '.join(unknown)}; a preset accepts the fields of a "
                          f"Llama config, e.g. {', '.join(SHAPE_FIELDS)}.")
    fields = {"max_position_embeddings": 8192, **PRESETS.get(preset, PRESETS["tiny"]), **config}
    for name in SHAPE_FIELDS:
        value = fields.get(name)
        if name in fields and value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                                     or value < 1):
            raise ConfigError(f"{field}.{name} must be an integer >= 1, got {value!r}.")
    if fields["hidden_size"] % fields["num_attention_heads"] and not fields.get("head_dim"):
        raise ConfigError(f"{field}: hidden_size {fields['hidden_size']} must be a multiple of num_attention_heads "
                          f"{fields['num_attention_heads']} (or give head_dim).")
    if fields["num_attention_heads"] % fields["num_key_value_heads"]:
        raise ConfigError(f"{field}: num_attention_heads {fields['num_attention_heads']} must be a multiple of "
                          f"num_key_value_heads {fields['num_key_value_heads']}.")
    count = preset_parameters(fields)
    if count > MAX_PRESET_PARAMETERS:
        raise ConfigError(f"{field} makes a model of about {count:.3g} parameters, more than the "
                          f"{MAX_PRESET_PARAMETERS:.0e} a preset may have; use smaller shape fields.")


ENV_ALLOW_DOWNLOADS = "DROPBP_ALLOW_DOWNLOADS"


def downloads_allowed() -> bool:
    """Whether a model name that is not a local folder may be fetched from the Hugging Face Hub
    (``DROPBP_ALLOW_DOWNLOADS=1``; off by default, so a typo fails at once instead of after network retries)."""
    return os.environ.get(ENV_ALLOW_DOWNLOADS, "0").strip().lower() in ("1", "true", "yes", "on")


HUB_PREFIX = "hf:"


def hub_id(name: str) -> str | None:
    """``hf:org/name`` -> ``org/name`` (a Hugging Face Hub reference); None for anything else."""
    return name[len(HUB_PREFIX):] if isinstance(name, str) and name.startswith(HUB_PREFIX) else None


def source_of(name: str, gguf_file: str | None = None) -> str:
    """What ``from_pretrained`` is given for a model, tokenizer or dataset name: the Hub id, the converted folder of
    a GGUF model (converted on first use; a folder plus ``gguf_file`` is one too), or the local path."""
    if is_gguf(name) or gguf_file:
        return gguf_source(name, gguf_file)
    return hub_id(name) or name


def check_hub_access(name: str, field: str) -> None:
    """A Hub reference may be used only with downloads allowed."""
    if hub_id(name) is not None and not downloads_allowed():
        raise ConfigError(f"{field} {name} is on the Hugging Face Hub, and downloads are off; set "
                          f"{ENV_ALLOW_DOWNLOADS}=1 to fetch it (or give a local copy).")


def check_model(name: Any, field: str = "--model", *, for_run: bool = True) -> None:
    """A preset, ``auto``, a named model, ``gguf:FILE``, a local folder, or a Hub reference ``hf:org/name`` (used
    only with downloads allowed; ``for_run=False`` checks the spelling alone). Refused at once otherwise."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{field} must be a preset ({', '.join(PRESETS)}), a named model ({', '.join(NAMED_MODELS)}) "
                          f"or a folder, got {name!r}.")
    if hub_id(name) is not None:
        if not hub_id(name):
            raise ConfigError(f"{field} {name!r} names no Hub repository; write hf:org/name.")
        if for_run:
            check_hub_access(name, field)
        return
    if is_gguf(name):
        check_gguf(name, None, field, for_run=for_run)
        return
    if name in PRESETS or name == "auto" or Path(name).is_dir():
        return
    raise ConfigError(
        f"{field} must be a preset ({', '.join(PRESETS)}), a named model ({', '.join(NAMED_MODELS)}), a local folder "
        f"holding a Hugging Face model, or {GGUF_PREFIX}PATH/TO/FILE.gguf; {name!r} is none of these (no such "
        f"folder). For a model on the Hugging Face Hub write hf:{name} and set {ENV_ALLOW_DOWNLOADS}=1 to allow the "
        "download."
    )


def max_positions(name: str, **overrides: Any) -> int | None:
    """The longest sequence the model is configured for (``max_position_embeddings``), where it can be read
    without loading weights: a preset, or a local folder's ``config.json``; None otherwise."""
    if name in PRESETS:
        return int(llama_config(name, **overrides).max_position_embeddings)
    folder = cached_source(name) if is_gguf(name) else Path(name)
    if folder is None:
        return None
    config = folder / "config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text()).get("max_position_embeddings")
        except (OSError, ValueError):
            return None
        return int(value) if isinstance(value, int) else None
    return None


def check_seq_len(name: str, seq_len: int, field: str = "--seq-len", **overrides: Any) -> None:
    """``seq_len`` must not exceed the model's ``max_position_embeddings`` (where it is known)."""
    limit = max_positions(name, **overrides)
    if limit is not None and seq_len > limit:
        raise ConfigError(f"{field} must be at most {limit} for --model {name} (its max_position_embeddings), "
                          f"got {seq_len}.")


def check_method(method: Any, field: str = "--method") -> None:
    """One of :data:`METHODS`; refused before any work."""
    if method not in METHODS:
        raise ConfigError(f"{field} must be one of {', '.join(METHODS)}, got {method!r}.")
