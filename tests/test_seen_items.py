"""Items already seen in the session (issue 10 §2): the repeat share, the auto rule, the evaluator
counting an excluded repeated target as a miss, and the model's stored default used by
`recommend` (old model directories keep seen items)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gru4rec.data.split_dir import SessionArrays
from gru4rec.errors import ConfigError
from gru4rec.evaluate import PopularityModel, evaluate_model
from gru4rec.persist import load_model
from gru4rec.recommender import Recommender, SessionScorer
from gru4rec.seen import (
    REPEAT_SHARE_THRESHOLD,
    default_exclude_seen,
    normalise_setting,
    repeat_stats,
    resolve_exclude_seen,
    seen_items_record,
)
from tests.synthetic import tiny_model_dir


def events(pairs: list[tuple[int, int]]) -> pl.DataFrame:
    return pl.DataFrame({"session_id": [s for s, _ in pairs], "item_idx": [i for _, i in pairs]})


def test_repeat_stats_by_hand():
    # session 1: a b a a c → pairs (1,a)×3, (1,b), (1,c); session 2: a b → two single pairs
    st_ = repeat_stats(events([(1, 0), (1, 1), (1, 0), (1, 0), (1, 2), (2, 0), (2, 1)]))
    assert (st_.events, st_.pairs, st_.repeated_pairs) == (7, 5, 1)
    assert st_.repeat_share == pytest.approx(1 / 5)
    assert st_.repeat_event_share == pytest.approx(2 / 7)
    # the same item in two sessions is no repeat
    assert repeat_stats(events([(1, 5), (2, 5), (3, 5)])).repeated_pairs == 0
    empty = repeat_stats(events([]).cast({"session_id": pl.Int64, "item_idx": pl.Int64}))
    assert (empty.events, empty.pairs, empty.repeat_share) == (0, 0, 0.0)
    # other column names, a LazyFrame
    lf = pl.LazyFrame({"user": [1, 1], "movie": ["x", "x"]})
    assert repeat_stats(lf, session="user", item="movie").repeat_share == 1.0


def test_auto_rule_and_settings():
    assert default_exclude_seen(0.0) and default_exclude_seen(REPEAT_SHARE_THRESHOLD / 2)
    assert not default_exclude_seen(REPEAT_SHARE_THRESHOLD) and not default_exclude_seen(0.24)
    assert resolve_exclude_seen("auto", 0.0) is True
    assert resolve_exclude_seen("auto", 0.2) is False
    assert resolve_exclude_seen(True, 0.2) is True and resolve_exclude_seen("false", 0.0) is False
    assert resolve_exclude_seen("true", None) is True
    for spelled, canonical in [(True, "true"), ("False", "false"), ("yes", "true"), ("0", "false"), (" AUTO ", "auto")]:
        assert normalise_setting(spelled) == canonical
    for bad in ("maybe", 2, None):
        with pytest.raises(ConfigError, match="auto, true, false"):
            normalise_setting(bad)
    with pytest.raises(ConfigError, match="repeat share"):
        resolve_exclude_seen("auto", None)
    record = seen_items_record("auto", repeat_stats(events([(1, 1), (1, 1)])), "train")
    assert record["setting"] == "auto" and record["exclude_seen"] is False and record["repeat_share"] == 1.0
    assert record["measured_on"] == "train" and record["threshold"] == REPEAT_SHARE_THRESHOLD


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 8)), max_size=80))
def test_repeat_stats_match_a_plain_count(pairs):
    """Against a dict count; invariants: share in [0, 1], order-free, repeats ⇔ duplicate pairs."""
    got = repeat_stats(events(pairs).cast({"session_id": pl.Int64, "item_idx": pl.Int64}))
    counts: dict[tuple[int, int], int] = {}
    for p in pairs:
        counts[p] = counts.get(p, 0) + 1
    assert got.events == len(pairs) and got.pairs == len(counts)
    assert got.repeated_pairs == sum(c > 1 for c in counts.values())
    assert 0.0 <= got.repeat_share <= 1.0 and 0.0 <= got.repeat_event_share < 1.0
    assert (got.repeated_pairs > 0) == (len(set(pairs)) < len(pairs))
    assert repeat_stats(events(pairs[::-1]).cast({"session_id": pl.Int64, "item_idx": pl.Int64})) == got
    # auto never excludes on data where a repeat is common, always where there is none
    if not got.repeated_pairs:
        assert resolve_exclude_seen("auto", got.repeat_share)


COUNTS = np.array([5, 3, 3, 1, 0])


def sessions(seqs: list[list[int]]) -> SessionArrays:
    items = np.array([i for s in seqs for i in s], dtype=np.int64)
    offsets = np.cumsum([0] + [len(s) for s in seqs])
    return SessionArrays(items=items, offsets=offsets, timestamps=np.zeros(len(items)))


def test_excluded_repeated_target_is_a_miss():
    """Behaviour change: with exclude='seen' a target the session already holds cannot be
    recommended, so it is a miss (the old evaluator ranked it by its own score: a free hit)."""
    # popularity ranks 0 first; session [0, 1, 0]: the second target (0) repeats the first item
    data = sessions([[0, 1, 0]])
    kept = evaluate_model(PopularityModel(COUNTS), data, ks=(1, 5))
    assert kept["recall@1"] == pytest.approx(1 / 2)  # 1 after 0 misses at 1; 0 after 0,1 is top
    excluded = evaluate_model(PopularityModel(COUNTS), data, ks=(1, 5), exclude="seen")
    # target 1 after [0]: 0 excluded → 1 ties with 2 → rank 2 (conservative); target 0: a miss
    assert excluded["recall@5"] == pytest.approx(1 / 2)
    assert excluded["mrr@5"] == pytest.approx((1 / 2 + 0) / 2)
    assert excluded["n_targets"] == 2


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 4), min_size=2, max_size=6), min_size=1, max_size=5))
def test_exclusion_only_costs_repeated_targets(seqs):
    """Excluding seen items never hurts a target that is new to its session, and makes every
    repeated target a miss."""
    data = sessions(seqs)
    ks = (1, 2, 5)
    kept = evaluate_model(PopularityModel(COUNTS), data, ks=ks)
    excluded = evaluate_model(PopularityModel(COUNTS), data, ks=ks, exclude="seen")
    targets = [(s[j], set(s[:j])) for s in seqs for j in range(1, len(s))]
    new = sum(t not in before for t, before in targets)
    assert excluded["recall@5"] == pytest.approx(new / len(targets))  # 5 items: every new target is a hit
    if new == len(targets):  # no repeats: exclusion can only raise the figures
        for k in ks:
            assert excluded[f"recall@{k}"] >= kept[f"recall@{k}"] - 1e-12
            assert excluded[f"mrr@{k}"] >= kept[f"mrr@{k}"] - 1e-12


def _with_seen_items(model_dir, exclude: bool | None):
    """Rewrite config.json's record (None = remove it: a model saved before it existed)."""
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.setdefault("extra", {}).pop("seen_items", None)
    if exclude is not None:
        config["extra"]["seen_items"] = {"setting": "auto", "exclude_seen": exclude, "repeat_share": 0.0}
    path.write_text(json.dumps(config))
    return load_model(model_dir)


def test_recommend_defaults_to_the_models_setting(tmp_path):
    """Behaviour change: a model that records exclude_seen=true leaves the session's items out
    without being asked; an old model directory (no record) keeps them, as before."""
    d = tiny_model_dir(tmp_path / "m")
    session = [100 + i for i in range(11)]  # all but item 111 of the 12
    old = _with_seen_items(d, None)
    assert old.exclude_seen is False
    assert len(Recommender(old).recommend_one(session, k=12).items) == 12
    new = _with_seen_items(d, True)
    assert new.exclude_seen is True
    rec = Recommender(new)
    assert rec.recommend_one(session, k=12).items == [111]
    assert len(rec.recommend_one(session, k=12, exclude_seen=False).items) == 12  # the caller overrides
    scorer = SessionScorer(new, k=12)
    for item in session:
        out = scorer.feed("s", item)
    assert out.items == [111]
    assert len(SessionScorer(new, k=12, exclude_seen=False).feed("s", 100).items) == 12
    kept = _with_seen_items(d, False)
    assert len(Recommender(kept).recommend_one(session, k=12).items) == 12


def test_static_exclusion_makes_an_excluded_target_a_miss():
    r = evaluate_model(PopularityModel(COUNTS), sessions([[3, 0], [3, 1]]), ks=(5,), exclude=[0])
    assert r["recall@5"] == pytest.approx(1 / 2)  # target 0 cannot be recommended


def _repeating_split(directory):
    """A split whose sessions revisit items (a b a c b …): a click log's repeat share."""
    from tests.synthetic import split_events

    rng = np.random.default_rng(1)
    keys, items, times = [], [], []
    for s in range(120):
        start = int(rng.integers(0, 30))
        walk = [(start + j) % 30 for j in range(4)]
        for j, item in enumerate(walk + walk[:2]):
            keys.append(s)
            items.append(item)
            times.append(s * 3_600_000 + j * 60_000)
    directory.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"session_key": keys, "item_id": items, "timestamp": times}).write_parquet(directory / "e.parquet")
    return split_events(directory / "e.parquet", directory / "split")


TINY = {"model.layers": "[16]", "train.n_sample": "0", "train.batch_size": "8", "train.lr": "0.1"}


@pytest.mark.parametrize("kind", ["no repeats", "repeats"])
def test_training_records_the_decision_and_evaluate_reports_both(tmp_path, kind):
    from gru4rec.jobs import build_config, evaluate_on_split, train_on_split
    from tests.synthetic import synthetic_split

    split = synthetic_split(tmp_path / "s") if kind == "no repeats" else _repeating_split(tmp_path / "s")
    cfg = build_config("gru4rec-xe", TINY, epochs=1, progress=False, threads=1)
    train_on_split(split, cfg, tmp_path / "m", full=True)
    seen = json.loads((tmp_path / "m" / "config.json").read_text())["extra"]["seen_items"]
    expect = kind == "no repeats"
    assert seen["setting"] == "auto" and seen["exclude_seen"] is expect and seen["measured_on"] == "train+valid"
    assert (seen["repeat_share"] == 0.0) is expect and seen["pairs"] > 0
    assert load_model(tmp_path / "m").exclude_seen is expect

    report = evaluate_on_split(split, tmp_path / "m", ks=(5, 20), exclude_seen="auto", compare_seen=True)
    assert (
        report["seen_items"]["exclude_seen"] is expect and report["seen_items"]["repeat_share"] == seen["repeat_share"]
    )
    other = report["metrics_other_seen"]
    assert other["exclude_seen"] is (not expect) and other["metrics"].keys() == report["metrics"].keys()
    with_excl, without = (report["metrics"], other["metrics"]) if expect else (other["metrics"], report["metrics"])
    for name in with_excl:
        assert with_excl[name]["n_targets"] == without[name]["n_targets"]
        if kind == "repeats":  # a repeated target is a miss once seen items are excluded: popularity loses them
            assert with_excl["popularity"]["recall@20"] < without["popularity"]["recall@20"]
    # the library's default stays "no exclusion" (figures comparable with published ones)
    plain = evaluate_on_split(split, tmp_path / "m", ks=(5, 20))
    assert plain["seen_items"]["setting"] == "false" and "metrics_other_seen" not in plain
    assert plain["metrics"] == without
    with pytest.raises(ConfigError, match="auto, true, false"):
        evaluate_on_split(split, tmp_path / "m", exclude_seen="sometimes")


def _movielens_without_repeats(path):
    """synthetic_movielens with each (user, item) kept once: ratings, as MovieLens has them."""
    from tests.synthetic import synthetic_movielens

    synthetic_movielens(path)
    rows, seen = [], set()
    for line in path.read_text().splitlines():
        user, item = line.split("\t")[:2]
        if (user, item) not in seen:
            seen.add((user, item))
            rows.append(line)
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_pipeline_records_the_decision_and_the_registered_model_uses_it(prefect_harness, tmp_path):
    """Through the real flow: auto resolves to 'exclude' on MovieLens-style data; the decision and the
    share are in the summary, the MLflow run (params, metrics of the other setting) and the version's
    tags; the registered pyfunc excludes seen items unless asked not to. A second run set to keep
    them is a new model (not 'nothing to train'), and the champion is re-evaluated with its setting."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from flows.config import EvaluationSettings, PipelineConfig, RegistrySettings, TrainingSettings
    from flows.training import training_pipeline
    from gru4rec.data.config import IngestConfig
    from tasks.registry import embedded_tracking_uri

    src = _movielens_without_repeats(tmp_path / "src" / "u.data")
    tiny = {"model.layers": "[16]", "train.n_sample": "64", "train.batch_size": "16", "train.epochs": 1}
    tiny |= {"train.threads": 1, "train.device": "cpu"}

    def config(setting: str) -> PipelineConfig:
        return PipelineConfig(
            ingest=IngestConfig(source=str(src)),
            training=TrainingSettings(preset="gru4rec-xe", overrides=tiny),
            evaluation=EvaluationSettings(exclude_seen=setting, baselines=["popularity"]),
            registry=RegistrySettings(name="seen"),
            workdir=str(tmp_path / "work"),
        )

    result = training_pipeline(config("auto"))
    seen = result["seen_items"]
    assert seen["setting"] == "auto" and seen["exclude_seen"] is True and seen["repeat_share"] == 0.0
    other = result["metrics_other_seen"]
    assert other["exclude_seen"] is False and set(other["metrics"]) == set(result["metrics"]) == {
        "gru4rec",
        "popularity",
    }
    summary = json.loads(
        (tmp_path / "work" / "runs" / result["run_dir"].rsplit("/", 1)[-1] / "summary.json").read_text()
    )
    assert summary["seen_items"]["exclude_seen"] is True
    model_cfg = json.loads(
        (tmp_path / "work" / "runs" / result["run_dir"].rsplit("/", 1)[-1] / "model" / "config.json").read_text()
    )
    assert model_cfg["extra"]["seen_items"]["exclude_seen"] is True

    uri, _ = embedded_tracking_uri(tmp_path / "work" / "mlflow")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    reg = result["registration"]
    run = client.get_run(reg["run_id"])
    assert run.data.params["seen_items.exclude_seen"] == "True" and run.data.params["seen_items.setting"] == "auto"
    assert run.data.params["seen_items.repeat_share"] == "0.0"
    assert "incl_seen_recall_at_20" in run.data.metrics
    assert client.get_model_version("seen", reg["version"]).tags["exclude_seen"] == "true"

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    pyfunc = mlflow.pyfunc.load_model("models:/seen@champion")
    session = [1, 2, 3]
    n = 200
    default = pyfunc.predict(pd.DataFrame({"items": [session]}), params={"k": n}).iloc[0]
    assert not set(default["items"]) & set(session)
    kept = pyfunc.predict(pd.DataFrame({"items": [session]}), params={"k": n, "exclude_seen": False}).iloc[0]
    assert set(session) <= set(kept["items"])

    second = training_pipeline(config("false"))
    assert second["registration"]["registered"] is True  # another default = another model
    assert second["seen_items"]["exclude_seen"] is False
    h2h = second["registration"]["head_to_head"]
    assert h2h is not None and h2h["champion_version"] == reg["version"]  # re-evaluated with seen items kept
    assert h2h["value"] == pytest.approx(result["metrics_other_seen"]["metrics"]["gru4rec"]["mrr@20"])


def test_cli_evaluate_reports_both_settings_and_recommend_uses_the_models_default(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app
    from gru4rec.jobs import build_config, train_on_split
    from tests.synthetic import synthetic_split

    split = synthetic_split(tmp_path / "s")  # no repeats: auto excludes
    train_on_split(split, build_config("gru4rec-xe", TINY, epochs=1, progress=False, threads=1), tmp_path / "m")
    runner = CliRunner()
    args = [
        "evaluate",
        "--split",
        str(split),
        "--model",
        str(tmp_path / "m"),
        "--k",
        "20",
        "--out",
        str(tmp_path / "r.json"),
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # titles and the summary line wrap at 80 columns
    assert "seen items excluded" in text and "seen items kept" in text
    assert "exclude_seen=auto" in text and "0.00%" in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["seen_items"]["exclude_seen"] is True and report["metrics_other_seen"]["exclude_seen"] is False
    for m in (report["metrics"], report["metrics_other_seen"]["metrics"]):  # both tables printed in full
        assert f"{m['gru4rec']['recall@20']:.4f}" in res.output
    res = runner.invoke(app, [*args, "--exclude-seen", "false"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["seen_items"]["exclude_seen"] is False
    res = runner.invoke(app, [*args, "--exclude-seen", "sometimes"])
    assert res.exit_code == 2

    def recommended(*extra):
        res = runner.invoke(app, ["recommend", "--model", str(tmp_path / "m"), "--k", "30", *extra, "3", "4"])
        assert res.exit_code == 0, res.output
        rows = [[c.strip() for c in line.strip().strip("│").split("│")] for line in res.output.splitlines()]
        return {r[1] for r in rows if len(r) == 3 and r[0].isdigit()}

    assert not {"3", "4"} & recommended()  # the model's default: excluded
    assert {"3", "4"} <= recommended("--no-exclude-seen")
