"""Each setting is declared once: CLI options come from the config models and only given options
override --config; preset overrides are the only place for seed/device; names are checked first."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flows.cli import PIPELINE_OPTIONS, PREPARE_OPTIONS, app
from flows.config import PipelineConfig, PrepareConfig
from gru4rec.errors import PipelineError


class Captured(PipelineError):
    pass


@pytest.fixture
def capture(monkeypatch):
    """Replace the flows by a stub that records the config it was given and stops the command."""
    import flows.prepare
    import flows.training

    seen = {}

    def stub(config):
        seen["config"] = config
        raise Captured("captured")

    monkeypatch.setattr(flows.prepare, "prepare_data", stub)
    monkeypatch.setattr(flows.training, "training_pipeline", stub)
    return seen


def test_prepare_config_file_settings_are_not_overwritten_by_cli_defaults(tmp_path, capture):
    (tmp_path / "events.csv").write_text("session,item,time\n")
    file_settings = {
        "ingest": {"source": str(tmp_path / "events.csv")},
        "validation": {"min_rows": 7, "drop_duplicates": True},
        "split": {"min_item_support": 2, "gap_minutes": 5.0, "remove_repeats": True},
        "out_dir": str(tmp_path / "from-file"),
    }
    (tmp_path / "prepare.json").write_text(json.dumps(file_settings))
    res = CliRunner().invoke(app, ["prepare", "--config", str(tmp_path / "prepare.json"), "--days", "3"])
    assert "captured" in res.output, res.output
    cfg: PrepareConfig = capture["config"]
    assert cfg.validation.min_rows == 7 and cfg.validation.drop_duplicates is True
    assert cfg.split.min_item_support == 2 and cfg.split.gap_minutes == 5.0 and cfg.split.remove_repeats is True
    assert cfg.out_dir == str(tmp_path / "from-file")
    assert cfg.split.test_days == 3.0  # the one option given on the command line wins


def test_prepare_option_given_overrides_the_file(tmp_path, capture):
    (tmp_path / "p.json").write_text(json.dumps({"split": {"min_item_support": 2}}))
    CliRunner().invoke(app, ["prepare", "--config", str(tmp_path / "p.json"), "--min-item-support", "9"])
    assert capture["config"].split.min_item_support == 9


def test_run_set_seed_and_device_are_applied(capture):
    res = CliRunner().invoke(app, ["run", "--set", "train.seed=7", "--set", "train.device=cpu"])
    assert "captured" in res.output, res.output
    train = capture["config"].training.gru4rec_config().train
    assert train.seed == 7 and train.device == "cpu"


def test_run_hyperparameter_options_become_overrides(capture):
    CliRunner().invoke(app, ["run", "--epochs", "3", "--lr", "0.05", "--layers", "64,32", "--preset", "gru4rec-bprmax"])
    cfg = capture["config"].training.gru4rec_config()
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.05 and cfg.model.layers == [64, 32]
    assert cfg.train.loss == "bpr-max"  # the preset's value where nothing overrides it


def test_the_same_setting_given_twice_differently_is_refused(capture):
    res = CliRunner().invoke(app, ["run", "--seed", "8", "--set", "train.seed=7"])
    assert res.exit_code == 2 and "given twice" in res.output and "config" not in capture


@pytest.mark.parametrize(
    "args, message",
    [
        (["--primary-metric", "bogus@7"], "registry.primary_metric 'bogus@7' is not an evaluated metric"),
        (["--primary-metric", "mrr@50"], "mrr@20"),  # K not among the evaluated cut-offs: lists the valid ones
        (["--set", "train.early_stopping_metric=recal@20"], "train.early_stopping_metric"),
        (["--set", "train.lrr=0.1"], "unknown setting 'train.lrr'"),
    ],
)
def test_bad_names_are_refused_before_any_work(tmp_path, capture, args, message):
    workdir = tmp_path / "work"
    res = CliRunner().invoke(app, ["run", "--workdir", str(workdir), *args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert "Value error" not in res.output and "(got {" not in res.output  # one readable line
    assert "config" not in capture and not workdir.exists()


def test_every_leaf_setting_has_exactly_one_option():
    def leaves(model, prefix=""):
        from flows.cli_options import _describe, _nested_model

        for name, field in model.model_fields.items():
            nested = _nested_model(field.annotation)
            if nested is not None:
                yield from leaves(nested, f"{prefix}{name}.")
            elif _describe(field.annotation) is not None:
                yield f"{prefix}{name}"

    for model, options in ((PrepareConfig, PREPARE_OPTIONS), (PipelineConfig, PIPELINE_OPTIONS)):
        paths = [".".join(o.path) for o in options]
        assert sorted(paths) == sorted(leaves(model)), model.__name__
        assert len({o.flag for o in options}) == len(options)


def test_option_help_comes_from_the_field_description():
    opt = next(o for o in PREPARE_OPTIONS if o.path == ("split", "min_item_support"))
    assert opt.flag == "min-item-support" and "default 5" in opt.help
    res = CliRunner().invoke(app, ["prepare", "--help"], terminal_width=200)
    assert "--min-item-support" in res.output and "--days" in res.output
