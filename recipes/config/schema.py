"""The recipe: the one typed definition of a fine-tuning run (model, data, optimisation, training, DropBP).

A recipe is a YAML file read into :class:`Recipe` by :func:`load_recipe`; every field below is documented by its
help text (``dropbp recipes show NAME`` prints a recipe, ``docs/OPTIONS.md`` lists every field). Problems of any
kind (unknown keys, wrong types, out-of-range values, missing files, combinations that cannot run) are collected and
reported together before anything is built.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dropbp import backends
from dropbp.core.checks import check_int, check_seed
from dropbp.core.errors import ConfigError
from dropbp.core.techniques import registered, technique_names
from dropbp.recipes.config.loader import Problems, apply_overrides, build, read_yaml, to_plain
from dropbp.recipes.config.gguf_source import NAMED_MODELS, check_gguf
from dropbp.recipes.config.fetched_data import FETCHED, check_fetched, check_fetched_name, fetched_name, fetched_path
from dropbp.recipes.config.presets import (METHODS, PRESETS, check_hub_access, check_model, check_preset_config, hub_id,
                                           max_positions, source_of)
from dropbp.recipes.config.dropbp_section import DropBPSection
from dropbp.recipes.config.fields import MAX_SIZE, check_declared, check_number, check_run_name, setting, yaml_key

DATA_FORMATS = ("alpaca", "chat", "text")
TEMPLATES = ("alpaca", "plain", "chat")
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("constant", "linear", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "mixed-bf16", "mixed-fp16")
HEAD_POSITIONS = ("auto", "labelled", "all")
BYTE_TOKENIZER = "byte"
CLUSTERS = Path(__file__).resolve().parents[1] / "clusters"


def _int(p: Problems, name: str, value: Any, low: int, high: int | None = None) -> None:
    p.check(check_int, name, value, low, high)


@dataclass
class ModelSection:
    """Which model, and how it is trained."""

    name: str = setting("tiny", f"a preset ({', '.join(PRESETS)}; random weights), a named pre-trained model "
                                f"({', '.join(NAMED_MODELS)}; from its installed package), a local folder with a "
                                "Hugging Face model, gguf:PATH/TO/FILE.gguf, or hf:org/name on the Hub (fetched only "
                                "with DROPBP_ALLOW_DOWNLOADS=1)")
    gguf_file: str | None = setting(None, "with a folder as model.name: the GGUF file in it to load (converted once to "
                                          "a Hugging Face folder in the cache, DROPBP_CACHE or ~/.cache/dropbp)")
    method: str = setting("lora", "full fine-tuning, LoRA, or QLoRA (4-bit NF4 base weights, bitsandbytes)",
                          choices=METHODS)
    config: dict[str, Any] = setting(help="preset fields to change, e.g. {hidden_size: 128, num_hidden_layers: 4}",
                                     default_factory=dict)
    tokenizer: str = setting("auto", "auto: the model's own tokenizer (byte-level for presets); byte; or a "
                                     "tokenizer folder or Hub name")
    trust_remote_code: bool = setting(False, "run code shipped with a Hub model (off unless you set it; printed when "
                                             "on)")
    lora_rank: int = setting(8, "LoRA rank r")
    lora_alpha: float = setting(16.0, "LoRA alpha (the update is scaled by alpha / r)")
    lora_dropout: float = setting(0.0, "dropout on the LoRA path")
    lora_targets: tuple[str, ...] = setting(("all-linear",), "modules that get adapters (PEFT target_modules; "
                                                             "all-linear = every linear layer but the head)")

    @property
    def source(self) -> str:
        """What ``from_pretrained`` is given for this model (see :func:`source_of`; GGUF models are converted once)."""
        return source_of(self.name, self.gguf_file)

    def check(self, p: Problems, for_run: bool = True) -> None:
        """Record every problem of this section (``for_run``: also whether Hub references may be fetched)."""
        if self.gguf_file is not None:
            p.check(check_gguf, self.name, self.gguf_file, "model.gguf_file", for_run=for_run)
        else:
            p.check(check_model, self.name, "model.name", for_run=for_run)
        if for_run and self.tokenizer not in ("auto", BYTE_TOKENIZER):
            p.check(check_hub_access, self.tokenizer, "model.tokenizer")
        check_declared(self, p, yaml_key("model"))
        if self.config and self.name not in PRESETS:
            p.add(f"model.config changes preset fields and applies only to presets ({', '.join(PRESETS)}); "
                  f"model.name is {self.name!r}.")
        elif self.config:
            p.check(check_preset_config, self.name, self.config)
        _int(p, "model.lora_rank", self.lora_rank, 1, MAX_SIZE)
        p.check(check_number, "model.lora_alpha", self.lora_alpha, low=0, low_open=True)
        p.check(check_number, "model.lora_dropout", self.lora_dropout, low=0, high=1, high_open=True)
        if not self.lora_targets:
            p.add("model.lora_targets needs at least one module name (or all-linear).")


@dataclass
class DataSection:
    """Where the examples come from and how they become token windows."""

    format: str = setting("alpaca", "alpaca: instruction/input/output records; chat: records with a 'messages' list "
                                    "of {role, content}; text: records with a 'text' field", choices=DATA_FORMATS)
    train: str = setting("", "training data: a JSON/JSONL file (relative paths are from the recipe's folder), "
                             "fetched:NAME (a data set fetched once at set-up: dropbp data ls), or hf:org/name, a "
                             "Hugging Face dataset (fetched only with DROPBP_ALLOW_DOWNLOADS=1)")
    validation: str | None = setting(None, "validation data in the same format; none: hold out "
                                           "validation_fraction of the training data")
    validation_fraction: float = setting(0.05, "share of the training data held out when there is no validation file")
    split_seed: int = setting(42, "seed of the held-out split (the paper's is 42)")
    columns: dict[str, Any] = setting(help="rename record fields to the format's names, e.g. {input: context, "
                                           "output: response} for Dolly", default_factory=dict)
    template: str = setting("alpaca", "prompt template of alpaca data: alpaca (the Stanford Alpaca prompt), plain "
                                      "(instruction, a newline, the input) or chat (instruction and input as the "
                                      "user's turn of the tokenizer's chat template, the output as the assistant's)",
                            choices=TEMPLATES)
    system_prompt: str | None = setting(None, "with template chat: the system message (none: the chat template's own "
                                              "default, e.g. SmolLM2's 'You are a helpful AI assistant named SmolLM'; "
                                              "a short one makes shorter sequences)")
    mask_prompt: bool = setting(False, "leave the prompt out of the loss (the paper's Alpaca runs did not)")
    seq_len: int = setting(512, "tokens per sequence")
    packing: bool = setting(False, "pack examples back to back into seq_len windows; false: one example per "
                                   "sequence, padded to seq_len (static shapes, as Gaudi wants)")
    max_examples: int | None = setting(None, "use at most this many training examples (none: all)")

    def check(self, p: Problems, base: Path, for_run: bool = True) -> None:
        """Record every problem of this section; relative paths are resolved against ``base``."""
        check_declared(self, p, yaml_key("data"))
        for name in ("train", "validation"):
            value = getattr(self, name)
            if value is None:
                continue
            if not value:
                p.add(f"data.{name} must name a JSON/JSONL file or a Hugging Face dataset, got an empty value.")
            elif hub_id(value) is not None:
                if for_run:
                    p.check(check_hub_access, value, f"data.{name}")
            elif fetched_name(value) is not None:
                p.check(check_fetched if for_run else check_fetched_name, fetched_name(value), f"data.{name}")
            elif not resolve_data_path(value, base).is_file():
                p.add(f"data.{name}: no such file {resolve_data_path(value, base)}; give a JSON/JSONL file, or "
                      f"hf:org/name for a Hugging Face dataset (fetched with DROPBP_ALLOW_DOWNLOADS=1).")
        p.check(check_number, "data.validation_fraction", self.validation_fraction, low=0, high=1, low_open=True,
                high_open=True)
        p.check(check_seed, self.split_seed, "data.split_seed")
        _int(p, "data.seq_len", self.seq_len, 2)
        if self.max_examples is not None:
            _int(p, "data.max_examples", self.max_examples, 1)


@dataclass
class OptimSection:
    """The optimiser and its learning-rate schedule."""

    optimizer: str = setting("adamw", "adamw or sgd", choices=OPTIMIZERS)
    lr: float = setting(1e-4, "peak learning rate")
    weight_decay: float = setting(0.0, "decoupled weight decay (adamw) or L2 (sgd)")
    lr_schedule: str = setting("cosine", "learning-rate schedule after warm-up: constant, linear decay to 0, or cosine "
                                      "decay to 0", choices=LR_SCHEDULES)
    warmup_steps: int = setting(0, "optimizer steps of linear warm-up from 0")
    max_grad_norm: float | None = setting(1.0, "clip the gradient norm to this (none: no clipping)")

    def check(self, p: Problems) -> None:
        """Record every problem of this section."""
        check_declared(self, p, yaml_key("optim"))
        p.check(check_number, "optim.lr", self.lr, low=0, low_open=True)
        p.check(check_number, "optim.weight_decay", self.weight_decay, low=0)
        _int(p, "optim.warmup_steps", self.warmup_steps, 0)
        if self.max_grad_norm is not None:
            p.check(check_number, "optim.max_grad_norm", self.max_grad_norm, low=0, low_open=True)


@dataclass
class TrainSection:
    """How long, in what batches, and what is evaluated, logged and saved."""

    steps: int | None = setting(100, "optimizer steps (none: derived from epochs)")
    epochs: float | None = setting(None, "passes over the training data; sets steps when steps is none")
    micro_batch_size: int = setting(4, "sequences per forward pass")
    grad_accum: int = setting(1, "micro-batches per optimizer step (global batch = micro_batch_size * grad_accum "
                                 "* data-parallel ranks)")
    precision: str = setting("auto", "fp32; bf16 (bf16 weights); mixed-bf16 / mixed-fp16 (autocast); auto: fp32 on "
                                     "the CPU, mixed-bf16 on accelerators", choices=PRECISIONS)
    seed: int = setting(0, "seed of the weights, adapters, data order and (unless dropbp.seed) the masks")
    eval_every: int = setting(50, "optimizer steps between validation evaluations (0: only at the end)")
    eval_batches: int | None = setting(None, "validation batches per evaluation (none: all)")
    exact_match: int = setting(0, "held-out prompts whose greedy answer is compared with the reference (alpaca "
                                  "data; 0: off)")
    max_new_tokens: int = setting(16, "longest greedy answer in the exact-match evaluation")
    save_every: int = setting(0, "optimizer steps between checkpoints (0: only at the end)")
    keep_checkpoints: int = setting(2, "newest checkpoints kept; older ones are deleted")
    log_every: int = setting(1, "optimizer steps between rows of metrics.csv")
    log_masks: bool = setting(False, "append each step's mask to masks-rank<R>.csv (to check that every rank drops "
                                     "the same branches)")
    stop_after_steps: int | None = setting(None, "stop after this many optimizer steps as if preempted (a checkpoint "
                                                 "is written; --resume continues); the schedule still spans steps")
    gradient_checkpointing: bool = setting(False, "recompute each block's activations in the backward instead of "
                                                  "keeping them (non-reentrant; with DropBP, dropped branches stay "
                                                  "dropped); less memory, about one more forward")
    checkpointing_reentrant: bool = setting(False, "with gradient_checkpointing: PyTorch's reentrant variant instead "
                                                   "(it recomputes a whole block whenever a gradient passes it, even "
                                                   "one whose branches are all dropped; for models or wrappers that "
                                                   "need it)")
    head_positions: str = setting("auto", "where the LM head and the loss run: labelled (only where the next token "
                                          "has a label: prompt and padding cost nothing there; the same loss and "
                                          "gradients), all (every position), or auto (labelled where a check on the "
                                          "first batch finds it exact)", choices=HEAD_POSITIONS)
    divergence_factor: float = setting(10.0, "exit 3 when a loss is not finite, or over this many times its running "
                                             "mean and the run's first losses (0: non-finite only)")

    def check(self, p: Problems) -> None:
        """Record every problem of this section."""
        if self.steps is None and self.epochs is None:
            p.add("train.steps or train.epochs must be set.")
        if self.steps is not None:
            _int(p, "train.steps", self.steps, 1)
        if self.epochs is not None:
            p.check(check_number, "train.epochs", self.epochs, low=0, low_open=True)
        for name in ("micro_batch_size", "grad_accum", "log_every", "keep_checkpoints", "max_new_tokens"):
            _int(p, f"train.{name}", getattr(self, name), 1, MAX_SIZE)
        for name in ("eval_every", "save_every", "exact_match"):
            _int(p, f"train.{name}", getattr(self, name), 0)
        if self.eval_batches is not None:
            _int(p, "train.eval_batches", self.eval_batches, 1)
        if self.stop_after_steps is not None:
            _int(p, "train.stop_after_steps", self.stop_after_steps, 1)
        p.check(check_number, "train.divergence_factor", self.divergence_factor, low=0)
        check_declared(self, p, yaml_key("train"))
        p.check(check_seed, self.seed, "train.seed")


@dataclass
class Recipe:
    """A fine-tuning run. ``dropbp train RECIPE [key=value ...] [--device] [--output-dir] [--resume]``."""

    name: str = setting("run", "short name of the run (the default output folder is runs/<name>)")
    description: str = setting("", "what the run is for")
    device: str = setting("auto", "auto, cpu, cuda or hpu (overridden by --device)", choices=backends.DEVICE_CHOICES)
    cluster: str | None = setting(None, "the cluster profile (recipes/clusters) the micro-batch and accumulation are "
                                        "sized for (dropbp port sets it); none: one device")
    nodes: int = setting(1, "nodes of that cluster: the global batch is micro_batch_size * grad_accum * ranks per "
                            "node * nodes")
    devices_per_node: int | None = setting(None, "ranks per node (none: every device of the cluster profile)")
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    dropbp: DropBPSection = field(default_factory=DropBPSection)
    technique: dict[str, Any] = setting(help="the options of dropbp.technique, by name (pld: theta_bar, gamma; "
                                             "freeze, freeze-dropbp: train_top_layers; lisa: layers, period; a "
                                             "registered technique: its options dataclass's fields)",
                                        default_factory=dict)
    #: The folder relative data paths are resolved against (the recipe file's folder); not part of the file.
    base_dir: Path = field(default=Path("."), metadata={"cli": False})

    def check(self, p: Problems, for_run: bool = True) -> None:
        """Record every problem, the sections' and those of combinations (``for_run``: also the environment's)."""
        p.check(check_run_name, self.name)
        check_declared(self, p, lambda name: name)
        known = sorted(path.stem for path in CLUSTERS.glob("*.yaml"))
        if self.cluster is not None and self.cluster not in known:
            p.add(f"cluster must be one of {', '.join(known)} or none, got {self.cluster!r}.")
        _int(p, "nodes", self.nodes, 1)
        if self.devices_per_node is not None:
            _int(p, "devices_per_node", self.devices_per_node, 1)
        self.model.check(p, for_run)
        self.data.check(p, self.base_dir, for_run)
        self.optim.check(p)
        self.train.check(p)
        self.dropbp.check(p)
        if self.dropbp.technique in technique_names():
            self.technique_options(p)
        if self.model.method == "qlora" and self.device == "hpu":
            p.add("model.method qlora needs bitsandbytes 4-bit kernels, which Intel Gaudi does not have; use method "
                  "lora there (dropbp port --allow-fallback lora does this for a whole recipe).")
        if self.model.tokenizer == BYTE_TOKENIZER or (self.model.tokenizer == "auto" and self.model.name in PRESETS):
            vocab = self.model.config.get("vocab_size", PRESETS.get(self.model.name, {}).get("vocab_size"))
            if isinstance(vocab, int) and vocab < 256:
                p.add(f"model.tokenizer {self.model.tokenizer!r} is byte-level (256 ids), but the model's vocabulary "
                      f"has {vocab}; use a model with vocab_size >= 256 or another tokenizer.")
        if self.model.name in PRESETS and isinstance(self.data.seq_len, int):
            limit = max_positions(self.model.name, **{k: v for k, v in self.model.config.items()
                                                      if k == "max_position_embeddings"})
            if limit is not None and self.data.seq_len > limit:
                p.add(f"data.seq_len must be at most {limit} for model {self.model.name} (its "
                      f"max_position_embeddings), got {self.data.seq_len}.")

    def to_data(self) -> dict[str, Any]:
        """The recipe as plain data, as a YAML file holds it (without ``base_dir``, which is where the file is)."""
        return {k: v for k, v in to_plain(self).items() if k != "base_dir"}

    def flat(self) -> dict[str, Any]:
        """Every field the command line can set, by dotted name (``train.steps``): what a resume compares."""
        def walk(value: Any, prefix: str) -> dict[str, Any]:
            if dataclasses.is_dataclass(value):
                out: dict[str, Any] = {}
                for f in dataclasses.fields(value):
                    if f.metadata.get("cli", True):
                        out.update(walk(getattr(value, f.name), f"{prefix}{f.name}."))
                return out
            return {prefix[:-1]: value}

        return walk(self, "")

    def with_absolute_paths(self) -> "Recipe":
        """A copy whose data files are absolute paths (so that it reads the same from any folder)."""
        data = self.data
        files = {name: str(resolve_data_path(getattr(data, name), self.base_dir).resolve())
                 for name in ("train", "validation")
                 if getattr(data, name) and hub_id(getattr(data, name)) is None}
        return dataclasses.replace(self, data=dataclasses.replace(data, **files))

    def technique_options(self, p: Problems | None = None) -> Any:
        """The options of ``dropbp.technique`` as its registered options dataclass, built from the ``technique``
        section (problems, when ``p`` is given, are recorded there by their ``technique.KEY`` names)."""
        problems = p or Problems("recipe")
        options_class = registered(self.dropbp.technique).options
        if self.technique and not dataclasses.fields(options_class):
            problems.add(f"dropbp.technique {self.dropbp.technique} takes no options, but the technique section sets "
                         f"{', '.join(sorted(map(str, self.technique)))}; remove them (technique={{}}).")
            options = options_class()
        else:
            options = build(options_class, self.technique, problems, "technique")
        if p is None:
            problems.raise_if_any()
        return options

    def masks_seed(self) -> int:
        """The seed of the drop masks."""
        return self.train.seed if self.dropbp.seed is None else self.dropbp.seed


def resolve_data_path(value: str, base: Path) -> Path:
    """A data path as written in a recipe: ``fetched:NAME`` (the fetched file in the cache), absolute, or relative to
    the recipe's folder."""
    if fetched_name(value) in FETCHED:
        return fetched_path(fetched_name(value))
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


#: Recipe keys that moved or were renamed (one meaning per name), and their new spelling.
MOVED_KEYS = {"dropbp.pld_theta_bar": "technique.theta_bar", "dropbp.pld_gamma": "technique.gamma",
              "dropbp.train_top_layers": "technique.train_top_layers",
              "optim.schedule": "optim.lr_schedule"}


def _refuse_moved_keys(data: dict[str, Any], problems: Problems) -> dict[str, Any]:
    """Refuse (and drop, so that checking goes on) keys written with an old spelling, each naming the new one."""
    for old, new in MOVED_KEYS.items():
        section_name, key = old.split(".")
        section = data.get(section_name)
        if isinstance(section, dict) and key in section:
            why = ("a technique's options live in the technique section" if new.startswith("technique.")
                   else "'schedule' alone is the drop-rate schedule (dropbp.schedule)")
            problems.add(f"{old} has moved: {why}; write {new}={section[key]!r} instead.")
            data = {**data, section_name: {k: v for k, v in section.items() if k != key}}
    return data


def load_recipe(source: Path | str | dict[str, Any], overrides: tuple[str, ...] | list[str] = (),
                device: str | None = None, base_dir: Path | None = None, for_run: bool = True) -> Recipe:
    """Read, override and check a recipe; one :class:`ConfigError` lists every problem. ``source`` is a YAML path
    or an already-parsed mapping; ``device`` (from ``--device``) wins over the recipe's. ``for_run=False`` checks
    the recipe alone (``dropbp recipes validate``), not whether this machine may fetch its Hub models and data."""
    if isinstance(source, dict):
        data, name, base = source, "recipe", base_dir or Path(".")
    else:
        path = Path(source)
        data, name, base = read_yaml(path), str(path), base_dir or path.resolve().parent
    problems = Problems(name)
    try:
        data = apply_overrides(data, overrides)
    except ConfigError as err:  # an override error is one more problem, reported with the rest
        problems.add(str(err))
    data = _refuse_moved_keys(data, problems)
    recipe = build(Recipe, data, problems)
    recipe = dataclasses.replace(recipe, base_dir=base)
    if device is not None:
        recipe.device = device
    recipe.check(problems, for_run)
    problems.raise_if_any()
    return recipe
