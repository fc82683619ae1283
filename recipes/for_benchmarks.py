"""What the benchmarks use from the application, imported explicitly (so type checkers and IDEs see every name's
real type): recipe loading and training, settings fields and checks, models, data, evaluation and reports.

The benchmarks layer imports the application only from here; a name a benchmark needs is added here, once.
"""
from __future__ import annotations

from dropbp.core.checks import check_int, check_seed
from dropbp.recipes.config.fields import (COMPILE_BACKEND, FOLDER, NON_NEGATIVE, NON_NEGATIVE_NUMBER, POSITIVE,
                                          POSITIVE_NUMBER, POSITIVE_NUMBERS, RATE, RATES, SEEDS, SOME_POSITIVE_NUMBERS,
                                          Naming, Rule, add_command, check_choice, check_declared, check_number,
                                          check_output_dir, option_name, setting, yaml_key)
from dropbp.recipes.config.command_settings import CommandSettings, Settings
from dropbp.recipes.config.gguf_source import cache_root
from dropbp.recipes.config.loader import Problems, apply_overrides, build, read_yaml
from dropbp.recipes.config.options import (batch_size_field, device_field, drop_rates_field, lr_field, method_field,
                                           model_field, model_overrides_field, out_field, pool_size_field,
                                           precision_field, resolve_model, resolve_sampler, sampler_field, seed_field,
                                           seq_len_field, steps_field)
from dropbp.recipes.config.presets import check_method, check_model, check_seq_len
from dropbp.recipes.config.registry import find_recipe
from dropbp.recipes.config.schema import DataSection, load_recipe
from dropbp.recipes.data.corpus import VOCAB_SIZE, batch_at, split_corpus, stdlib_corpus
from dropbp.recipes.data.instruct import IGNORE, load_records, to_windows, tokenize
from dropbp.recipes.data.tasks import family_folder
from dropbp.recipes.data.tokenizers import ByteTokenizer
from dropbp.recipes.finetune import FineTune
from dropbp.recipes.model.build import (DEFAULT_LORA_RANK, apply_method, build_model, check_cpu_4bit_shapes,
                                        check_fits, quantize_4bit, set_checkpointing)
from dropbp.recipes.report.publish import environment, mib, publish, pyplot, results_folder, write_text_atomic
from dropbp.recipes.report.tables import markdown_table
from dropbp.recipes.report.savings import training_flops
from dropbp.recipes.training.evaluation import teacher_forced_exact_match
from dropbp.recipes.training.labelled_head import head_fraction, labelled_positions_loss
from dropbp.recipes.training.optim import lr_scheduler
from dropbp.recipes.training.rates import rate_schedule
from dropbp.recipes.training.step import StepRunner, causal_lm_loss

__all__ = ["COMPILE_BACKEND", "DEFAULT_LORA_RANK", "FOLDER", "IGNORE", "NON_NEGATIVE", "NON_NEGATIVE_NUMBER",
           "POSITIVE", "POSITIVE_NUMBER", "POSITIVE_NUMBERS", "RATE", "RATES", "SEEDS", "SOME_POSITIVE_NUMBERS",
           "VOCAB_SIZE", "ByteTokenizer", "CommandSettings", "DataSection", "FineTune", "Naming", "Problems", "Rule",
           "Settings", "StepRunner", "add_command", "apply_method", "apply_overrides", "batch_at", "batch_size_field",
           "build", "build_model", "cache_root", "causal_lm_loss", "check_choice", "check_cpu_4bit_shapes",
           "check_declared", "check_fits", "check_int", "check_method", "check_model",
           "check_number", "check_output_dir", "check_seed", "check_seq_len",
           "device_field", "drop_rates_field", "environment", "family_folder", "find_recipe", "head_fraction",
           "labelled_positions_loss", "load_recipe", "load_records", "lr_field", "lr_scheduler", "markdown_table",
           "method_field", "mib", "model_field", "model_overrides_field", "option_name", "out_field",
           "pool_size_field", "precision_field", "publish", "pyplot", "quantize_4bit", "rate_schedule", "read_yaml",
           "resolve_model", "resolve_sampler", "results_folder", "sampler_field", "seed_field", "seq_len_field",
           "set_checkpointing", "setting", "split_corpus", "stdlib_corpus", "steps_field",
           "teacher_forced_exact_match", "to_windows", "tokenize", "training_flops", "write_text_atomic", "yaml_key"]
