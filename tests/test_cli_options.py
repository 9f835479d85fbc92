"""Selection options are generated from ``dprune.select.PruneSpec``: one file declares them."""
import dataclasses

import click
import pytest
from click.testing import CliRunner

import dprune.stages
from dprune import cli, cli_options
from dprune.select import RUN_DEFAULTS, PruneSpec, _option

# (command, the PruneSpec its defaults come from, fields it requires, fields it sets itself)
COMMANDS = [("prune", PruneSpec(), ("ratio",), ()), ("run", RUN_DEFAULTS, (), ("seed",))]


@pytest.mark.parametrize("name, defaults, required, skip", COMMANDS)
def test_every_prunespec_field_is_a_generated_option(name, defaults, required, skip):
    options = {p.name: p for p in cli.main.commands[name].params}
    for f in dataclasses.fields(PruneSpec):
        if f.name in skip:
            assert not isinstance(options[f.name], cli_options.SpecOption)  # the command's own (run: --seed)
            continue
        opt = options[f.name]
        assert isinstance(opt, cli_options.SpecOption), f.name
        assert opt.help == f.metadata["help"]
        assert opt.required == (f.name in required)
        if f.name not in required:
            assert opt.default == getattr(defaults, f.name), f.name
        if isinstance(opt.type, click.Choice):
            assert tuple(opt.type.choices) == f.metadata["choices"]
        else:
            assert not f.metadata["choices"] or f.name == "outliers"  # a fraction or 'flagged'
    generated = {n for n, p in options.items() if isinstance(p, cli_options.SpecOption)}
    assert generated == {f.name for f in dataclasses.fields(PruneSpec)} - set(skip)


def test_train_generates_its_prune_in_run_selection_from_prunespec(tmp_path):
    from dprune.runs import SELECTION_OPTIONS

    options = {p.name: p for p in cli.main.commands["train"].params}
    assert set(SELECTION_OPTIONS.values()) == {f.name for f in dataclasses.fields(PruneSpec)} - {"seed"}
    for name, field in SELECTION_OPTIONS.items():
        meta = PruneSpec.__dataclass_fields__[field].metadata
        assert options[name].opts[0] == (meta["flag"] or "--" + field.replace("_", "-"))
        default = getattr(RUN_DEFAULTS, field)
        assert meta["help"] in options[name].help and (default is None or f"[default: {default}]" in options[name].help)
    run = cli._make_config(None, {"out": str(tmp_path / "o"), "epochs": 10, "prune_at": 2, "remove_outliers": "flagged",
                                  "detector": "argmax", "ratio": 0.4, "seed": 5})
    assert run.prune == dataclasses.replace(RUN_DEFAULTS, outliers="flagged", detector="argmax", ratio=0.4, seed=5)
    run = cli._make_config(None, {"out": str(tmp_path / "o"), "epochs": 10, "prune_at": 2, "remove_outliers": "0.05"})
    assert run.prune.outliers == 0.05


def test_a_new_field_becomes_an_option_with_its_checks():
    """What adding a field to PruneSpec gives, here on a subclass: its option, its default, its choices."""
    Wider = dataclasses.make_dataclass(
        "Wider", [("order", str, _option("fast", "Which way to sort.", choices=("fast", "stable"))),
                  ("share", float, _option(0.5, "A share, in [0, 1).", unit=True))],
        bases=(PruneSpec,), frozen=True)
    got = {}

    @click.command()
    @cli_options.spec_options(Wider(), required=("ratio",))
    def cmd(spec):
        got["spec"] = spec

    runner = CliRunner()
    assert "Which way to sort." in runner.invoke(cmd, ["--help"]).output
    assert runner.invoke(cmd, ["-r", "0.2", "--order", "stable", "--policy", "class"]).exit_code == 0
    assert got["spec"] == Wider(ratio=0.2, order="stable", policy="class")
    assert got["spec"].share == 0.5
    assert runner.invoke(cmd, ["-r", "0.2", "--order", "quick"]).exit_code == 2  # not a choice
    bad = runner.invoke(cmd, ["-r", "0.2", "--share", "1.5"])
    assert isinstance(bad.exception, ValueError) and "share must be in [0, 1), got 1.5" in str(bad.exception)


@pytest.mark.parametrize("args, want", [
    ([], dataclasses.replace(RUN_DEFAULTS, seed=0)),
    (["--ratio", "0.5", "--policy", "global", "--no-relabel", "--remove-outliers", "flagged", "--seed", "3"],
     dataclasses.replace(RUN_DEFAULTS, ratio=0.5, policy="global", relabel=False, outliers="flagged", seed=3)),
    (["--remove-outliers", "0.05", "--detector", "argmax", "--mislabelled", "relabel"],
     dataclasses.replace(RUN_DEFAULTS, outliers=0.05, detector="argmax", mislabelled="relabel")),
])
def test_run_passes_its_selection_to_the_stages(tmp_path, monkeypatch, args, want):
    seen = {}
    monkeypatch.setattr(dprune.stages, "run_pipeline", lambda rc: seen.setdefault("rc", rc) and "done")
    result = CliRunner().invoke(cli.main, ["run", "--out", str(tmp_path / "out"), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen["rc"].spec == want


@pytest.mark.parametrize("args, message", [
    (["--ratio", "1"], "Error: prune ratio must be in [0, 1), got 1.0"),
    (["--remove-outliers", "2"], "Error: outliers must be in [0, 1) or 'flagged', got 2.0"),
    (["--remove-outliers", "most"], "Error: unknown outliers 'most'; valid: flagged or a number in [0, 1)"),
])
def test_run_refuses_a_bad_selection_in_one_line(tmp_path, args, message):
    result = CliRunner().invoke(cli.main, ["run", "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 1 and result.output.strip() == message
    assert not (tmp_path / "out").exists()
