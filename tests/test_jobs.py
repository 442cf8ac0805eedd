"""The train/evaluate steps and their CLI commands on a tiny synthetic split; the item-kNN baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gru4rec.baselines import ItemKNN
from gru4rec.data.split_dir import SessionArrays
from gru4rec.errors import ConfigError, ModelFileError
from gru4rec.evaluate import evaluate_model
from gru4rec.jobs import build_config, evaluate_on_split, train_on_split
from tests.synthetic import synthetic_split

TINY = {"model.layers": "[16]", "train.n_sample": "0", "train.batch_size": "8", "train.lr": "0.1"}


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    return synthetic_split(tmp_path_factory.mktemp("steps"))


def test_item_knn_similarity_by_hand():
    # sessions {0,1,2}, {0,1}, {3,0}: supp = [3,2,1,1], cooc(0,1)=2, cooc(0,2)=1, cooc(0,3)=1
    s = SessionArrays(items=np.array([0, 1, 2, 0, 1, 3, 0]), offsets=np.array([0, 3, 5, 7]), timestamps=np.zeros(7))
    knn = ItemKNN(s, 4, alpha=0.5, lam=0.0)
    knn.begin(torch.device("cpu"))
    scores, _ = knn.step(torch.tensor([0, 3]), [])
    expected0 = [0.0, 2 / np.sqrt(3 * 2), 1 / np.sqrt(3 * 1), 1 / np.sqrt(3 * 1)]
    np.testing.assert_allclose(scores[0].numpy(), expected0, rtol=1e-6)
    np.testing.assert_allclose(scores[1].numpy(), [1 / np.sqrt(1 * 3), 0, 0, 0], rtol=1e-6)
    # It runs through the same evaluator: the test session 0→1 ranks item 1 first.
    m = evaluate_model(knn, SessionArrays(np.array([0, 1]), np.array([0, 2]), np.zeros(2)), ks=(1,))
    assert m["recall@1"] == 1.0 and m["n_targets"] == 1


def test_train_then_evaluate_beats_popularity(split_dir, tmp_path):
    cfg = build_config("gru4rec-xe", TINY, epochs=4, progress=False, seed=3)
    summary = train_on_split(split_dir, cfg, tmp_path / "model", preset="gru4rec-xe")
    hist = json.loads((tmp_path / "model" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert all("valid_mrr@20" in h and h["events_per_s"] > 0 for h in hist)
    assert summary["split_fingerprint"] and summary["trained_on"] == "train"

    report = evaluate_on_split(split_dir, tmp_path / "model", ks=(1, 5), out=tmp_path / "metrics.json")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metrics"].keys() == {"gru4rec", "popularity", "item-knn"}
    m = report["metrics"]
    # The pattern i → i+1 is learnable: GRU4Rec must clearly beat popularity on the same targets.
    assert m["gru4rec"]["n_targets"] == m["popularity"]["n_targets"] == m["item-knn"]["n_targets"]
    assert m["gru4rec"]["recall@5"] > m["popularity"]["recall@5"] + 0.2


def test_full_training_counts_valid_items(split_dir, tmp_path):
    cfg = build_config("gru4rec-xe", TINY, epochs=1, progress=False)
    summary = train_on_split(split_dir, cfg, tmp_path / "full", full=True)
    assert summary["trained_on"] == "train+valid"
    assert all("valid_mrr@20" not in h for h in summary["history"])


def test_bad_override_and_mismatched_model(split_dir, tmp_path):
    with pytest.raises(ConfigError, match="train.lrr"):
        build_config("gru4rec-xe", {"train.lrr": "0.1"})
    other = synthetic_split(tmp_path / "other", n_items=17, seed=5)
    cfg = build_config("gru4rec-xe", TINY, epochs=1, progress=False)
    train_on_split(other, cfg, tmp_path / "other-model")
    with pytest.raises(ModelFileError, match="another item index"):
        evaluate_on_split(split_dir, tmp_path / "other-model")


def test_cli_train_and_evaluate(split_dir, tmp_path):
    from flows.cli import app

    runner = CliRunner()
    sets = [a for kv in TINY.items() for a in ("--set", f"{kv[0]}={kv[1]}")]
    res = runner.invoke(
        app,
        [
            "train",
            "--split",
            str(split_dir),
            "--out",
            str(tmp_path / "m"),
            "--epochs",
            "1",
            "--no-progress",
            "--threads",
            "1",
            *sets,
        ],
    )
    assert res.exit_code == 0, res.output
    assert "Training history" in res.output and "…" not in res.output
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--split",
            str(split_dir),
            "--model",
            str(tmp_path / "m"),
            "--k",
            "5,20",
            "--out",
            str(tmp_path / "m.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "gru4rec" in res.output and "popularity" in res.output
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["ks"] == [5, 20]
    # Not a terminal (80 columns): every figure must still be printed in full, not cut to "0.…".
    assert "…" not in res.output
    assert f"{report['metrics']['gru4rec']['recall@20']:.4f}" in res.output
    res = runner.invoke(app, ["evaluate", "--split", str(split_dir), "--model", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output
