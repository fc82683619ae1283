"""The one model builder: the base model from the first loader that applies (4-bit, preset, local folder or Hub),
then the adapters its method trains (full fine-tuning, LoRA, or QLoRA: 4-bit NF4 base weights through
``transformers``' ``BitsAndBytesConfig`` and ``bitsandbytes``), all adapters through PEFT."""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from dropbp.backends import Backend
from dropbp.core.errors import ConfigError
from dropbp.core.seeding import seeded
from dropbp.recipes.config.presets import METHODS, PRESETS, check_model, downloads_allowed, llama_config, source_of
from dropbp.recipes.config.schema import ModelSection

QLORA_MISSING = ("model.method qlora needs the bitsandbytes package, which is not installed: pip install "
                 "'dropbp[qlora]' (or pip install bitsandbytes), or use method lora.")


@contextlib.contextmanager
def quiet_bitsandbytes() -> Iterator[None]:
    """Inside: bitsandbytes logs errors only. PEFT imports bitsandbytes whenever it is installed (on import in some
    versions, when it first wraps a linear layer in others), even for LoRA, which uses no 4-bit layer, and
    bitsandbytes then warns about an optional CPU kernel package: its fallback is what runs, and a LoRA user should not
    see a 4-bit kernel warning as the first line of a run."""
    quiet = logging.getLogger("bitsandbytes")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)


def quiet_peft_import() -> None:
    """Import PEFT without bitsandbytes' kernel warning (:func:`quiet_bitsandbytes`)."""
    with quiet_bitsandbytes():
        import peft  # noqa: F401


def lora_config(rank: int, alpha: float, dropout: float, targets: tuple[str, ...] | list[str],
                task_type: str | None = "CAUSAL_LM") -> Any:
    """A PEFT ``LoraConfig`` (``all-linear``: every linear layer but the head)."""
    quiet_peft_import()
    from peft import LoraConfig

    target: Any = "all-linear" if list(targets) == ["all-linear"] else list(targets)
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target, task_type=task_type)


def add_lora(model: nn.Module, config: Any, seed: int) -> nn.Module:
    """``get_peft_model`` with adapters initialised from ``seed`` (PEFT draws from the global generator, which is
    forked and restored here)."""
    from peft import get_peft_model

    with seeded(seed, next(model.parameters()).device), quiet_bitsandbytes():
        return get_peft_model(model, config)


def _load_kwargs(spec: ModelSection) -> dict[str, Any]:
    return {"local_files_only": not downloads_allowed(), "trust_remote_code": spec.trust_remote_code}


def _bitsandbytes() -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(QLORA_MISSING)
    # bitsandbytes warns on import that an optional CPU kernel package is missing; its fallback is what runs here
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def _from_pretrained_4bit(source: str, backend: Backend, **kwargs: Any) -> nn.Module:
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute = torch.float32 if not backend.accelerator else torch.bfloat16
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                                      bnb_4bit_use_double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=quantization,
                                                 device_map={"": str(backend.device)}, **kwargs)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def quantize_4bit(model: nn.Module, backend: Backend) -> nn.Module:
    """``model`` (weights in memory, e.g. pre-trained here) with NF4 4-bit linear weights, ready for adapters: saved
    to a temporary folder and loaded back quantized, as any checkpoint would be."""
    _bitsandbytes()
    with tempfile.TemporaryDirectory(prefix="dropbp-qlora-") as folder:
        model.save_pretrained(folder)
        return _from_pretrained_4bit(folder, backend, local_files_only=True)


def load_4bit(spec: ModelSection, backend: Backend, seed: int) -> nn.Module:
    """The base model with NF4 4-bit linear weights, ready for adapters (norms and embeddings in fp32)."""
    _bitsandbytes()
    if not backend.accelerator and spec.name in PRESETS:
        check_cpu_4bit_shapes(spec.name, spec.config)
    if spec.name in PRESETS:  # random weights, quantized on load like any checkpoint
        return quantize_4bit(build_model(spec.name, seed=seed, **spec.config), backend)
    return _from_pretrained_4bit(spec.source, backend, **_load_kwargs(spec))


CPU_4BIT_BLOCK = 64  # bitsandbytes' CPU NF4 kernels: output features in blocks of 32, input features of 64


def check_cpu_4bit_shapes(preset: str, overrides: dict[str, Any], field: str = "model.method") -> None:
    """bitsandbytes' CPU kernels need every quantized layer's input and output sizes to be multiples of 64; the
    error names ``field``."""
    config = llama_config(preset, **overrides)
    head_dim = config.hidden_size // config.num_attention_heads
    sizes = {"hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
             "num_key_value_heads * head_dim": config.num_key_value_heads * head_dim}
    bad = {name: size for name, size in sizes.items() if size % CPU_4BIT_BLOCK}
    if bad:
        listed = ", ".join(f"{name} = {size}" for name, size in bad.items())
        raise ConfigError(f"{field} qlora on the CPU needs every linear layer's sizes to be multiples of "
                          f"{CPU_4BIT_BLOCK} (bitsandbytes' CPU kernels); here {listed}. Change the model's shape.")


#: A loader gives the base model of a model section, or None when it does not apply; the first that applies wins.
Loader = Callable[[ModelSection, Backend, torch.dtype, int], "nn.Module | None"]


def _quantized(spec: ModelSection, backend: Backend, dtype: torch.dtype, seed: int) -> nn.Module | None:
    """QLoRA: the base model with NF4 4-bit linear weights (a preset quantized on load, or a checkpoint)."""
    return load_4bit(spec, backend, seed) if spec.method == "qlora" else None


def _preset(spec: ModelSection, backend: Backend, dtype: torch.dtype, seed: int) -> nn.Module | None:
    """A preset built in code with random weights."""
    if spec.name not in PRESETS:
        return None
    return build_model(spec.name, dtype=dtype, device=backend.device, seed=seed, **spec.config)


def _pretrained(spec: ModelSection, backend: Backend, dtype: torch.dtype, seed: int) -> nn.Module | None:
    """A local folder holding a Hugging Face model, a GGUF model (converted once), or ``hf:org/name`` (fetched only
    with downloads allowed)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(spec.source, dtype=dtype, **_load_kwargs(spec))
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.name {spec.name!r} could not be loaded: {str(err).splitlines()[0]}") from None
    return model.to(backend.device)


#: The loaders, in the order they are tried.
LOADERS: tuple[Loader, ...] = (_quantized, _preset, _pretrained)


def add_adapters(model: nn.Module, spec: ModelSection, seed: int) -> nn.Module:
    """PEFT LoRA adapters for ``lora`` and ``qlora`` (rank, alpha, dropout and targets from ``spec``, initialised
    from ``seed``); ``full`` returns the model unchanged."""
    if spec.method not in ("lora", "qlora"):
        return model
    return add_lora(model, lora_config(spec.lora_rank, spec.lora_alpha, spec.lora_dropout, spec.lora_targets), seed)


def build_recipe_model(spec: ModelSection, backend: Backend, dtype: torch.dtype, seed: int) -> nn.Module:
    """The one model builder: the first of :data:`LOADERS` that applies gives the base model on ``backend``'s
    device, then :func:`add_adapters` adds what the method trains."""
    model = next(model for model in (load(spec, backend, dtype, seed) for load in LOADERS) if model is not None)
    return add_adapters(model, spec, seed)


def base_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model under any DistributedDataParallel or PEFT wrapper."""
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def enable_checkpointing(model: nn.Module, reentrant: bool = False) -> None:
    """Hugging Face activation checkpointing on the base model under any PEFT wrapper: non-reentrant by default (it
    recomputes only what a kept path unpacks, and needs no input that requires a gradient); the reentrant variant
    on request, with the embeddings' output made to require a gradient (else, with frozen embeddings as under
    LoRA, no gradient would reach a checkpointed block)."""
    base = base_model(model)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(f"train.gradient_checkpointing: {type(base).__name__} does not support activation "
                          "checkpointing; turn it off.")
    kwargs = {"use_reentrant": reentrant}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.24; the older name is deprecated there
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if reentrant:
        base.enable_input_require_grads()


def set_checkpointing(model: nn.Module, on: bool) -> None:
    """:func:`enable_checkpointing`, or turn it off again (the benchmarks switch it between contenders)."""
    if on:
        enable_checkpointing(model)
        return
    base = base_model(model)
    (getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable)()


def model_vocab_size(spec: ModelSection) -> int | None:
    """The vocabulary size the model will have, where it is known without loading weights."""
    if spec.name in PRESETS:
        return int(spec.config.get("vocab_size", PRESETS[spec.name]["vocab_size"]))
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(spec.source, **_load_kwargs(spec)).vocab_size)
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def build_model(preset_or_path: str, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                seed: int = 0, **overrides: Any) -> nn.Module:
    """A causal LM from a preset (random init, seeded without touching the caller's global RNG) or a local path."""
    from transformers import AutoModelForCausalLM

    if preset_or_path in PRESETS:
        config = llama_config(preset_or_path, **overrides)
        device = torch.device(device)
        with seeded(seed, device), device:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return model
    check_model(preset_or_path)
    try:
        return AutoModelForCausalLM.from_pretrained(source_of(preset_or_path), dtype=dtype,
                                                    local_files_only=not downloads_allowed()).to(device)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"--model must be a preset ({', '.join(PRESETS)}) or a local folder / hub name that transformers can "
            f"load; {preset_or_path!r} could not be loaded: {str(err).splitlines()[0]}"
        ) from None


def check_fits(preset_or_path: str, *, dtype: torch.dtype, method: str, capacity_bytes: int | None,
               **overrides: Any) -> None:
    """Refuse, before allocating anything, a preset whose weights (plus gradients and AdamW moments when every
    weight trains) exceed 90% of the device's memory, instead of letting the process be killed."""
    if preset_or_path not in PRESETS or not capacity_bytes:
        return
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(llama_config(preset_or_path,
                                                                                        **overrides)).parameters())
    need = params * torch.tensor([], dtype=dtype).element_size() * (4 if method == "full" else 1)
    if need > 0.9 * capacity_bytes:
        raise ConfigError(
            f"--model {preset_or_path} needs about {need / 2**30:.1f} GiB for its weights"
            f"{' and optimizer state' if method == 'full' else ''} in {str(dtype).replace('torch.', '')}, more than "
            f"this device has ({capacity_bytes / 2**30:.1f} GiB). Choose a smaller preset (e.g. tiny), --method "
            "lora, --precision bf16, or a device with more memory."
        )


DEFAULT_LORA_RANK = 8


def apply_method(model: nn.Module, method: str, *, lora_rank: int = DEFAULT_LORA_RANK, seed: int = 0) -> nn.Module:
    """:func:`add_adapters` for a method name alone (the benchmarks' models): 'full' trains every weight; 'lora'
    adds LoRA of rank ``lora_rank`` (alpha twice the rank) on every linear layer, initialised from ``seed``."""
    if method == "qlora":
        raise ConfigError("method qlora: quantize the base model first (load_4bit or quantize_4bit), then apply "
                          "'lora' to it; dropbp train recipes do both.")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")
    return add_adapters(model, ModelSection(method=method, lora_rank=lora_rank, lora_alpha=2.0 * lora_rank), seed)
