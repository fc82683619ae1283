"""dropbp recipes: the application layer (recipes and cluster profiles, models, data, the training loop, checkpoints,
porting, reports, the ``dropbp`` CLI).

This module is the public surface: the benchmarks and your own code import from here (or from
:mod:`dropbp.recipes.training`), never from the subpackages, which may move. Names load on first use.
"""
from __future__ import annotations

from dropbp.recipes.lazy import lazy_exports
from dropbp.recipes.training import EXPORTS as TRAINING_EXPORTS

_CONFIG = "dropbp.recipes.config."
_FIELDS, _LOADER, _OPTIONS = _CONFIG + "fields", _CONFIG + "loader", _CONFIG + "options"
_PRESETS, _SCHEMA = _CONFIG + "presets", _CONFIG + "schema"
_BUILD, _CORPUS, _INSTRUCT = "dropbp.recipes.model.build", "dropbp.recipes.data.corpus", "dropbp.recipes.data.instruct"
_PUBLISH = "dropbp.recipes.report.publish"


def _names(module: str, *names: str) -> dict[str, str]:
    return dict.fromkeys(names, module)


EXPORTS: dict[str, str] = {
    # running recipes
    **_names("dropbp.recipes.finetune", "FineTune"),
    **_names(_SCHEMA, "Recipe", "load_recipe", "DataSection", "ModelSection"),
    **_names(_CONFIG + "registry", "shipped", "find_recipe"),
    **_names(_CONFIG + "clusters", "ClusterProfile", "load_cluster", "cluster_names"),
    **_names("dropbp.recipes.port", "port_recipe"),
    # settings of commands and benchmarks
    **_names("dropbp.core.checks", "check_int", "check_seed"),
    **_names(_FIELDS, "setting", "add_command", "from_args", "option_name", "yaml_key", "Naming",
             "check_choice", "check_drop_rates",
             "check_non_negative", "check_number", "check_output_dir", "check_positive"),
    **_names(_LOADER, "Problems", "apply_overrides", "build", "read_yaml"),
    **_names(_OPTIONS, "device_field", "drop_rates_field", "method_field", "model_field", "out_field",
             "pool_size_field", "precision_field", "sampler_field", "seed_field", "resolve_model", "resolve_sampler"),
    **_names(_PRESETS, "PRESETS", "METHODS", "check_method", "check_model", "check_seq_len", "llama_config"),
    **_names(_CONFIG + "gguf_source", "NAMED_MODELS", "cache_root"),
    # models and data
    **_names(_BUILD, "build_model", "apply_method", "build_recipe_model", "check_fits", "check_cpu_4bit_shapes",
             "quantize_4bit", "load_4bit", "DEFAULT_LORA_RANK", "set_checkpointing"),
    **_names(_CORPUS, "VOCAB_SIZE", "batch_at", "split_corpus", "stdlib_corpus"),
    **_names(_INSTRUCT, "IGNORE", "load_records", "to_windows", "tokenize", "load_data"),
    **_names("dropbp.recipes.data.tasks", "TASK_DATA", "family_folder"),
    **_names("dropbp.recipes.data.tokenizers", "ByteTokenizer", "load_tokenizer"),
    # reports
    **_names(_PUBLISH, "publish", "results_folder", "environment", "library_versions", "pyplot", "mib",
             "write_text_atomic"),
    **_names("dropbp.recipes.report.tables", "markdown_table"),
    **_names("dropbp.recipes.report.plots", "plot_training_curve"),
    **_names("dropbp.recipes.report.verdict", "training_flops"),
    # training
    **TRAINING_EXPORTS,
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
