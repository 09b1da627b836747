"""Run files (``--config FILE.yaml``): precedence, errors, the shipped examples, grids, and a file-built run whose
record matches the flag-built one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cme_bench import runfile
from cme_bench.cli import build_parser, main, parse_args
from cme_bench.config import RunConfig, config_from_args
from cme_bench.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TASKS = "cme_mini_boolq,cme_mini_arc_easy"


def _file(tmp_path: Path, text: str, name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_command_line_beats_file_beats_defaults(tmp_path: Path):
    f = _file(tmp_path, "model: tiny-llama\nmax-steps: 3\nlr: 1e-3\ntasks: [cme_mini_boolq]\nno-baseline: true\n")
    args = parse_args(["run", "--config", f, "--lr", "0.5", "--seed", "4"])
    cfg = config_from_args(args)
    assert cfg.learning_rate == 0.5 and cfg.seed == 4  # typed on the command line
    assert cfg.model == "tiny-llama" and cfg.max_steps == 3 and cfg.tasks == ["cme_mini_boolq"]  # from the file
    assert args.baseline is False  # the flag spelling `no-baseline: true` means baseline = false
    assert cfg.batch_size == RunConfig().batch_size  # neither: the default
    # A value typed on the command line wins even when it equals the default.
    args = parse_args(["run", "--config", f, "--max-steps", str(RunConfig().max_steps)])
    assert config_from_args(args).max_steps == RunConfig().max_steps


def test_field_and_flag_spellings_are_both_accepted(tmp_path: Path):
    a = parse_args(["train", "--config", _file(tmp_path, "learning_rate: 0.001\nmax_steps: 7\n", "a.yaml")])
    b = parse_args(["train", "--config", _file(tmp_path, "lr: 0.001\nmax-steps: 7\n", "b.yaml")])
    assert config_from_args(a) == config_from_args(b)


def test_unknown_key_names_the_nearest_valid_one(tmp_path: Path, capsys):
    f = _file(tmp_path, "learning_rat: 0.1\nmax_stepz: 3\n")
    assert main(["run", "--config", f]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'learning_rat' (nearest valid key: 'learning_rate')" in err
    assert "unknown key 'max_stepz' (nearest valid key: 'max_steps')" in err


def test_bad_values_are_reported_together(tmp_path: Path):
    f = _file(tmp_path, "max_steps: many\nbackend: [hf, vllm, x]\ngradient_checkpointing: maybe\n")
    with pytest.raises(ConfigError) as err:
        parse_args(["run", "--config", f])
    text = str(err.value)
    assert "max_steps" in text and "gradient_checkpointing: expected true or false" in text


def test_a_grid_outside_a_sweep_is_refused(tmp_path: Path, capsys):
    assert main(["train", "--config", _file(tmp_path, "grid: {seed: [0, 1]}\n")]) == 2
    assert "unknown key 'grid'" in capsys.readouterr().err


def test_help_says_the_precedence():
    for verb in ("run", "train", "eval", "sweep", "profile"):
        help_text = build_parser()._subparsers._group_actions[0].choices[verb].format_help()
        assert "command line > run file > defaults" in " ".join(help_text.split()), verb


def test_default_run_file_is_the_default_run():
    args = parse_args(["run", "--config", str(REPO / "configs" / "default-run.yaml")])
    plain = parse_args(["run"])
    assert config_from_args(args) == config_from_args(plain)
    assert runfile.resolved(args, args._parser) == runfile.resolved(plain, plain._parser)


def test_the_resolved_configuration_is_printed_first_and_is_itself_a_run_file(tmp_path: Path, capsys):
    f = _file(tmp_path, f"model: tiny-llama\ntasks: {TASKS}\nlimit: 3\n")
    assert main(["eval", "--config", f, "--adapter-path", str(tmp_path / "missing")]) == 2
    out = capsys.readouterr().out
    assert out.startswith("# resolved configuration (command line > run file > defaults; run file ")
    printed = out.split("\n", 1)[1]
    again = parse_args(["eval", "--config", _file(tmp_path, printed, "printed.yaml")])
    assert config_from_args(again, adapter="none") == config_from_args(
        parse_args(["eval", "--config", f]), adapter="none"
    )


def test_grid_file_expands_to_the_expected_runs(tmp_path: Path):
    f = _file(
        tmp_path,
        "model: tiny-llama\nadapters: [lora, teamlora]\nmax_steps: 5\n"
        "grid:\n  seed: [0, 1]\n  learning_rate: [1.0e-3, 1.0e-4]\n",
    )
    args = parse_args(["sweep", "--config", f])
    names = runfile.adapters_of(args.grid, args.adapters.split(","))
    runs = runfile.expand(config_from_args(args, adapter=names[0]), names, args.grid)
    got = [(r.adapter, r.seed, r.learning_rate, r.max_steps) for r in runs]
    assert got == [(a, s, lr, 5) for s in (0, 1) for lr in (1e-3, 1e-4) for a in ("lora", "teamlora")]
    assert len({r.run_id() for r in runs}) == 8  # every run its own folder
    assert runs[0].run_id() == "tiny-llama--lora--cme-mini--s0--learning_rate-0.001"
    # The adapter axis may also sit in the grid; a grid axis typed on the command line replaces the file's.
    f2 = _file(tmp_path, "grid: {adapter: [lora, dora], seed: [0, 1, 2]}\n", "g2.yaml")
    args = parse_args(["sweep", "--config", f2, "--seed", "7"])
    names = runfile.adapters_of(args.grid, [])
    runs = runfile.expand(config_from_args(args, adapter=names[0]), names, args.grid)
    assert [(r.adapter, r.seed) for r in runs] == [("lora", 7), ("dora", 7)]
    args = parse_args(["sweep", "--config", f2, "--adapters", "teamlora"])
    assert runfile.adapters_of(args.grid, [args.adapters]) == ["teamlora"] and args.grid == {"seed": [0, 1, 2]}


def test_paper_sweep_file_expands_to_six_adapters_times_three_seeds():
    args = parse_args(["sweep", "--config", str(REPO / "configs" / "paper-sweep.yaml")])
    names = runfile.adapters_of(args.grid, args.adapters.split(","))
    runs = runfile.expand(config_from_args(args, adapter=names[0]), names, args.grid)
    assert names == ["lora", "lora-r128", "moelora", "hydralora", "teamlora", "comol"]
    assert len(runs) == 18 and {r.seed for r in runs} == {0, 1, 2}
    assert {r.run_id() for r in runs} == {f"smollm2-135m--{a}--cme-mini--s{s}" for a in names for s in (0, 1, 2)}


def test_grid_errors_name_the_axis(tmp_path: Path):
    f = _file(tmp_path, "adapters: [lora]\ngrid: {sed: [0, 1], max_steps: 3}\n")
    with pytest.raises(ConfigError) as err:
        parse_args(["sweep", "--config", f])
    assert "grid: unknown key 'sed' (nearest valid key: 'seed')" in str(err.value)
    assert "grid.max_steps: expected a non-empty list" in str(err.value)


def test_run_file_reproduces_the_flag_built_run(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CME_BENCH_CACHE", str(tmp_path / "cache"))
    flags = ["--model", "tiny-llama", "--adapter", "lora", "--tasks", TASKS, "--train-cap", "16", "--batch-size",
             "4", "--max-steps", "2", "--lr", "0.001"]  # fmt: skip
    f = _file(
        tmp_path,
        f"model: tiny-llama\nadapter: lora\ntasks: [{TASKS}]\ntrain_cap: 16\nbatch_size: 4\nmax_steps: 2\n"
        "learning_rate: 1.0e-3\n",
    )
    assert main(["train", *flags, "--output", str(tmp_path / "a")]) == 0
    assert main(["train", "--config", f, "--output", str(tmp_path / "b")]) == 0
    (a,) = (tmp_path / "a").glob("*/run.json")
    (b,) = (tmp_path / "b").glob("*/run.json")
    assert a.parent.name == b.parent.name  # the same run id
    rec_a, rec_b = json.loads(a.read_text()), json.loads(b.read_text())
    assert {**rec_a["config"], "output": None} == {**rec_b["config"], "output": None}
    if "identity" in rec_a:  # the run identity digest, where records carry one
        assert rec_a["identity"]["digest"] == rec_b["identity"]["digest"]
    assert rec_a["training"]["loss_curve"] == rec_b["training"]["loss_curve"]


def test_profile_reads_lists_from_a_run_file(tmp_path: Path):
    f = _file(tmp_path, "model: tiny-llama\nadapters: [lora, teamlora]\nexperts: [2, 4]\nno_memory: true\n")
    args = parse_args(["profile", "--config", f, "--repeats", "2"])
    assert args.adapters == ["lora", "teamlora"] and args.experts == [2, 4]
    assert args.no_memory is True and args.repeats == 2 and args.model == "tiny-llama"


def test_sweep_file_runs_every_grid_point_once_and_the_base_once_per_seed(tmp_path: Path, capsys):
    f = _file(
        tmp_path,
        "model: tiny-llama\ntasks: [cme_mini_boolq]\ntrain_cap: 8\nbatch_size: 4\nmax_steps: 2\nlimit: 2\n"
        "grid:\n  adapter: [lora]\n  seed: [0, 1]\n  learning_rate: [1.0e-2, 5.0e-2]\n",
    )
    out = tmp_path / "results"
    assert main(["sweep", "--config", f, "--output", str(out), "--no-report", "--log-to", "tensorboard"]) == 0
    assert "grid: 4 points x 1 adapters = 4 runs" in capsys.readouterr().out
    runs = sorted(p.name for p in out.iterdir() if (p / "run.json").is_file())
    assert runs == sorted(
        [f"tiny-llama--lora--cme-mini--s{s}--learning_rate-{lr}" for s in (0, 1) for lr in ("0.01", "0.05")]
        + [f"tiny-llama--none--cme-mini--s{s}" for s in (0, 1)]
    )
    rec = json.loads((out / "tiny-llama--lora--cme-mini--s1--learning_rate-0.05" / "run.json").read_text())
    assert rec["status"] == "success" and rec["config"]["learning_rate"] == 0.05 and rec["config"]["seed"] == 1
    # A sweep trains every run before it evaluates any: each run's tracker holds its own curve and scores.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / rec["run_id"] / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert events.Scalars("eval/cme_mini_boolq")[0].value == pytest.approx(rec["metrics"]["cme_mini_boolq"]["value"])
