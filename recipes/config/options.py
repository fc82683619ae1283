"""Settings fields and values shared by several subcommands: one default, one help text and one meaning of
``auto`` each."""
from __future__ import annotations

from typing import Any

from dropbp.backends import DEVICE_CHOICES, PRECISIONS, Backend
from dropbp.core.samplers import SAMPLERS
from dropbp.recipes.config.gguf_source import NAMED_MODELS
from dropbp.recipes.config.presets import ENV_ALLOW_DOWNLOADS, PRESETS
from dropbp.recipes.config.fields import FOLDER, POSITIVE, POSITIVE_NUMBER, RATES, SEED, setting

DEFAULT_DROP_RATES = (0.5, 0.75, 0.875)


def device_field() -> Any:
    """``device``: auto, cpu, cuda or hpu."""
    return setting("auto", "device backend; auto picks hpu > cuda > cpu", choices=DEVICE_CHOICES,
                   allowed=f"one of {', '.join(DEVICE_CHOICES)}; the device must be present")


def seed_field() -> Any:
    """``seed``: weights, data and masks."""
    return setting(0, "seed for the weights, the data and the masks", allowed=SEED)


def out_field() -> Any:
    """``out``: the results folder."""
    return setting(None, "results folder (default: results/<device>)",
                   allowed=FOLDER)


MODEL_ALLOWED = (f"a preset ({', '.join(PRESETS)}), `auto` where offered, a named model ({', '.join(NAMED_MODELS)}), a "
                 f"local folder with a Hugging Face model, gguf:PATH/TO/FILE.gguf, or hf:org/name (fetched only with "
                 f"{ENV_ALLOW_DOWNLOADS}=1)")


def model_field(default: str = "auto") -> Any:
    """``model``: a preset, a local path or a hub name; ``auto`` is tiny on the CPU and llama2-7b elsewhere."""
    auto = "; auto: tiny on the CPU, llama2-7b on a GPU or Gaudi" if default == "auto" else ""
    return setting(default, f"model preset ({', '.join(PRESETS)}; random weights), a local folder, or hf:org/name"
                            f"{auto}", allowed=MODEL_ALLOWED)


def method_field(default: str = "lora", choices: tuple[str, ...] = ("full", "lora")) -> Any:
    """``method``: full fine-tuning or LoRA (QLoRA trains through ``dropbp train`` recipes)."""
    return setting(default, "fine-tuning method (QLoRA: through dropbp train recipes)", choices=choices)


def drop_rates_field() -> Any:
    """``drop_rates``: the rates compared, comma-separated on the command line."""
    return setting(DEFAULT_DROP_RATES, "drop rates to compare, comma-separated, each in [0, 1)",
                   allowed=RATES)


def seq_len_field(default: int, help: str = "tokens per sequence") -> Any:
    """``seq_len``: tokens per sequence, at most the model's context."""
    return setting(default, help,
                   allowed=POSITIVE.described(f"{POSITIVE}, at most the model's max_position_embeddings (8192 for "
                                              "the presets)"))


def batch_size_field(default: int, help: str = "sequences per step") -> Any:
    """``batch_size``: sequences (or examples) per step."""
    return setting(default, help, allowed=POSITIVE)


def steps_field(default: int, help: str = "training steps") -> Any:
    """``steps``: training steps (or measured rounds, as ``help`` says)."""
    return setting(default, help, allowed=POSITIVE)


def lr_field(default: float, help: str = "AdamW learning rate") -> Any:
    """``lr``: a learning rate."""
    return setting(default, help, allowed=POSITIVE_NUMBER)


def model_overrides_field(help: str, default: dict[str, Any] | None = None) -> Any:
    """``model_overrides``: model fields to change, set from a config file or Python (not a command-line flag)."""
    return setting(help=help, cli=False, default_factory=lambda: dict(default or {}))


def sampler_field() -> Any:
    """``sampler``: bernoulli, pool, or the device's default."""
    return setting("auto", "drop sampler; auto = the device's default: pool on hpu (every new mask is a new compiled "
                           "graph there), bernoulli elsewhere", choices=("auto", *SAMPLERS))


def pool_size_field() -> Any:
    """``pool_size``: masks in the pool sampler."""
    return setting(8, "masks in the pool sampler (K)", allowed=POSITIVE)


def precision_field() -> Any:
    """``precision``: the model dtype."""
    return setting("auto", "weights and compute dtype (mixed-*: fp32 weights, autocast compute); auto = fp32 on the "
                           "CPU, mixed-bf16 elsewhere", choices=("auto", *PRECISIONS))


def resolve_sampler(name: str, backend: Backend | type[Backend]) -> str:
    """'auto' -> the backend's default sampler; any other name is returned unchanged."""
    return backend.default_sampler if name == "auto" else name


def resolve_model(name: str, backend: Backend | type[Backend]) -> str:
    """'auto' -> 'tiny' on the CPU (compute-bound there in about a second a step), 'llama2-7b' on an accelerator
    (the paper's shape: a tiny model on an accelerator measures kernel-launch overhead, not DropBP)."""
    if name != "auto":
        return name
    return "llama2-7b" if backend.accelerator else "tiny"
