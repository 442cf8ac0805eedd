"""MLflow registry: the champion/challenger decision (pure), registration on a real embedded SQLite
store, retry safety with a registration key, and what the logged pyfunc model ships and loads.

Tiny synthetic model directory only (no ../shared data): runs in a fresh clone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tasks import registry
from tasks.registry import (
    CHALLENGER,
    CHAMPION,
    ChampionInfo,
    Decision,
    HeadToHead,
    decide_alias,
    embedded_tracking_uri,
    library_import_closure,
    log_and_register,
)
from tests.synthetic import tiny_model_dir

FP = "a" * 64
OTHER_FP = "b" * 64
NAME = "tiny"
N_ITEMS = 12

# ---------------------------------------------------------------- decide_alias: one test per branch


def champ(value=0.3, fingerprint=FP, metric="mrr@20", version="3"):
    return ChampionInfo(version=version, split_fingerprint=fingerprint, primary_metric=metric, metric_value=value)


def test_decide_no_champion():
    assert decide_alias(0.1, "mrr@20", FP, None, candidate_version="1") == Decision(
        CHAMPION, "first version registered: becomes champion", None, None
    )


def test_decide_champion_is_this_version():
    d = decide_alias(0.1, "mrr@20", FP, champ(version="4"), candidate_version="4")
    assert d == Decision(CHAMPION, "first version registered: becomes champion", None, None)


def test_decide_different_split_fingerprint():
    d = decide_alias(0.9, "mrr@20", FP, champ(fingerprint=OTHER_FP))
    assert d == Decision(
        CHALLENGER,
        "not comparable: champion v3 was evaluated on another dataset/split "
        "(fingerprint bbbbbbbbbbbb vs aaaaaaaaaaaa); champion unchanged",
        "3",
        0.3,
    )


def test_decide_champion_without_fingerprint():
    d = decide_alias(0.9, "mrr@20", FP, champ(fingerprint=None))
    assert d.alias == CHALLENGER and "(fingerprint None vs aaaaaaaaaaaa)" in d.reason


@pytest.mark.parametrize("champion", [champ(value=None), champ(metric="recall@20"), champ(metric=None)])
def test_decide_champion_lacks_the_metric(champion):
    d = decide_alias(0.9, "mrr@20", FP, champion)
    assert d == Decision(
        CHALLENGER, "not comparable: champion v3 has no mrr@20; champion unchanged", "3", champion.metric_value
    )


def test_decide_candidate_better():
    d = decide_alias(0.31, "mrr@20", FP, champ())
    assert d == Decision(CHAMPION, "mrr@20 0.3100 beats champion v3 (0.3000)", "3", 0.3)


def test_decide_candidate_equal_is_not_better():
    d = decide_alias(0.3, "mrr@20", FP, champ())
    assert d == Decision(CHALLENGER, "mrr@20 0.3000 does not beat champion v3 (0.3000); champion unchanged", "3", 0.3)


def test_decide_candidate_worse():
    d = decide_alias(0.2, "mrr@20", FP, champ())
    assert d == Decision(CHALLENGER, "mrr@20 0.2000 does not beat champion v3 (0.3000); champion unchanged", "3", 0.3)


def h2h(value=0.25, version="3", unknown=40):
    return HeadToHead(
        champion_version=version, value=value, unknown_targets=unknown, n_targets=1000, test_fingerprint=FP
    )


def test_decide_new_data_uses_the_champions_score_on_the_new_test_split():
    d = decide_alias(0.28, "mrr@20", FP, champ(fingerprint=OTHER_FP), head_to_head=h2h(0.25))
    assert d.alias == CHAMPION and d.champion_metric == 0.25 and d.champion_version == "3"
    assert d.reason.startswith("mrr@20 0.2800 beats champion v3 (0.2500)")
    assert "40 of its 1,000 targets are items it never saw" in d.reason
    # the champion's own (old-split) value 0.3 would have kept it: the head-to-head decides
    lost = decide_alias(0.24, "mrr@20", FP, champ(fingerprint=OTHER_FP), head_to_head=h2h(0.25))
    assert lost.alias == CHALLENGER and "does not beat champion v3 (0.2500)" in lost.reason


def test_decide_head_to_head_of_another_version_is_not_used():
    # the champion changed after the head-to-head evaluation was made
    d = decide_alias(0.9, "mrr@20", FP, champ(version="5", fingerprint=OTHER_FP), head_to_head=h2h(version="3"))
    assert d.alias == CHALLENGER and d.reason.startswith("not comparable: champion v5")


def test_decide_minimum_gain_is_relative():
    assert decide_alias(0.302, "mrr@20", FP, champ(), min_gain=0.01).alias == CHALLENGER
    d = decide_alias(0.304, "mrr@20", FP, champ(), min_gain=0.01)
    assert d.alias == CHAMPION and "by more than 1.0%" in d.reason


@pytest.mark.parametrize("champion", [None, champ(value=0.01)])
def test_decide_never_promotes_what_does_not_beat_popularity(champion):
    d = decide_alias(0.1, "mrr@20", FP, champion, popularity=0.1)
    assert d.alias == CHALLENGER and "does not beat the popularity baseline (0.1000)" in d.reason
    assert decide_alias(0.11, "mrr@20", FP, champion, popularity=0.1).alias == CHAMPION


def test_decide_flags_a_loss_to_a_knn_baseline_loudly():
    d = decide_alias(0.31, "mrr@20", FP, champ(), baselines={"item-knn": 0.35, "popularity": 0.5, "sknn": 0.2})
    assert d.alias == CHAMPION  # flagged, not blocked
    assert d.warnings == ("WARNING: loses to the item-knn baseline on mrr@20 (0.3100 < 0.3500)",)
    assert d.reason.endswith("; WARNING: loses to the item-knn baseline on mrr@20 (0.3100 < 0.3500)")


# ---------------------------------------------------------------- what the model ships


def test_inference_closure_is_loading_and_recommending_only():
    files = {p.as_posix() for p in library_import_closure()}
    assert {"gru4rec/__init__.py", "gru4rec/persist.py", "gru4rec/recommender.py", "gru4rec/model.py"} <= files
    for not_needed in ("gru4rec/trainer.py", "gru4rec/jobs.py", "gru4rec/data/readers.py", "gru4rec/baselines.py"):
        assert not_needed not in files


def test_closure_follows_relative_and_submodule_imports(tmp_path):
    (tmp_path / "entry.py").write_text("def f():\n    from gru4rec import persist\n")
    files = {p.as_posix() for p in library_import_closure(tmp_path / "entry.py")}
    assert "gru4rec/persist.py" in files and "gru4rec/io.py" in files  # persist → io, found transitively
    imports = registry._imported_library_modules
    (tmp_path / "rel.py").write_text("from . import io\nfrom .data.config import X\n")
    assert imports(tmp_path / "rel.py", "gru4rec.persist", False) == {
        "gru4rec",
        "gru4rec.io",
        "gru4rec.data.config",
        "gru4rec.data.config.X",
    }


# ---------------------------------------------------------------- registration on an embedded store


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("model") / "m", N_ITEMS, layers=8)


@pytest.fixture
def store(tmp_path):
    from mlflow import MlflowClient

    uri, artifacts = embedded_tracking_uri(tmp_path / "mlflow")
    return uri, artifacts, MlflowClient(tracking_uri=uri, registry_uri=uri)


def register(model_dir, store, mrr, fingerprint=FP, **kw):
    uri, artifacts, _ = store
    return log_and_register(
        model_dir,
        metrics={"mrr@20": mrr, "recall@20": 0.5},
        config={"model": {"layers": [8]}, "train": {"lr": 0.05}},
        split_fingerprint=fingerprint,
        data_manifest_hash="m" * 64,
        registry_name=NAME,
        tracking_uri=uri,
        artifact_location=artifacts,
        experiment="tests",
        **kw,
    )


def versions(client) -> list[int]:
    return sorted(int(v.version) for v in client.search_model_versions(f"name='{NAME}'"))


def champion_version(client) -> str:
    return str(client.get_model_version_by_alias(NAME, CHAMPION).version)


def n_runs(client) -> int:
    return len(client.search_runs([client.get_experiment_by_name("tests").experiment_id]))


def test_champion_moves_only_on_a_better_comparable_version(model_dir, store):
    _, _, client = store
    first = register(model_dir, store, 0.20)
    assert (first.version, first.alias, first.champion_version) == ("1", CHAMPION, None)
    assert first.decision == "first version registered: becomes champion"
    tags = client.get_model_version(NAME, "1").tags
    assert tags["split_fingerprint"] == FP and tags["primary_metric"] == "mrr@20"
    assert float(tags["primary_metric_value"]) == 0.20
    assert tags["alias"] == CHAMPION and tags["decision"] == first.decision and tags["champion_metric_value"] == ""
    run = client.get_run(first.run_id)
    assert run.data.metrics["mrr_at_20"] == 0.20 and run.data.tags["split_fingerprint"] == FP
    assert run.data.params["model.layers"] == "[8]"

    better = register(model_dir, store, 0.25)
    assert (better.version, better.alias, better.champion_version, better.champion_metric) == ("2", CHAMPION, "1", 0.2)
    assert better.decision == "mrr@20 0.2500 beats champion v1 (0.2000)"
    assert champion_version(client) == "2"

    worse = register(model_dir, store, 0.10)
    assert (worse.version, worse.alias, worse.champion_version) == ("3", CHALLENGER, "2")
    assert "does not beat champion v2" in worse.decision
    assert champion_version(client) == "2"
    assert str(client.get_model_version_by_alias(NAME, CHALLENGER).version) == "3"
    tags = client.get_model_version(NAME, "3").tags
    assert tags["alias"] == CHALLENGER and tags["decision"] == worse.decision
    assert float(tags["champion_metric_value"]) == 0.25 and tags["champion_version"] == "2"

    other = register(model_dir, store, 0.99, fingerprint=OTHER_FP)
    assert other.alias == CHALLENGER and "another dataset/split" in other.decision
    assert champion_version(client) == "2" and versions(client) == [1, 2, 3, 4]


def test_retry_with_a_completed_registration_key_returns_it(model_dir, store):
    _, _, client = store
    first = register(model_dir, store, 0.2, registration_key="flow-run-1")
    runs = n_runs(client)
    again = register(model_dir, store, 0.2, registration_key="flow-run-1")
    assert again == first
    assert versions(client) == [1] and n_runs(client) == runs, "nothing new is logged or registered"
    assert client.get_model_version(NAME, "1").tags["registration_key"] == "flow-run-1"
    other = register(model_dir, store, 0.1, registration_key="flow-run-2")
    assert other.version == "2" and other.alias == CHALLENGER


def test_retry_finishes_a_registration_killed_before_tagging(model_dir, store, monkeypatch):
    _, _, client = store
    register(model_dir, store, 0.2)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed between version creation and tagging")

    monkeypatch.setattr(registry, "record_decision", killed)
    with pytest.raises(KeyboardInterrupt):
        register(model_dir, store, 0.3, registration_key="k")
    monkeypatch.undo()
    assert versions(client) == [1, 2]
    assert "alias" not in client.get_model_version(NAME, "2").tags
    runs = n_runs(client)

    result = register(model_dir, store, 0.3, registration_key="k")
    assert (result.version, result.alias, result.champion_version) == ("2", CHAMPION, "1")
    assert result.decision == "mrr@20 0.3000 beats champion v1 (0.2000)"
    assert versions(client) == [1, 2] and n_runs(client) == runs
    assert champion_version(client) == "2"
    tags = client.get_model_version(NAME, "2").tags
    assert tags["alias"] == CHAMPION and tags["decision"] == result.decision and tags["registration_key"] == "k"
    assert register(model_dir, store, 0.3, registration_key="k") == result


def test_retry_after_alias_set_keeps_the_recorded_decision(model_dir, store):
    _, _, client = store
    register(model_dir, store, 0.2)
    done = register(model_dir, store, 0.3, registration_key="k")
    client.delete_model_version_tag(NAME, done.version, "alias")  # died just before the last tag
    again = register(model_dir, store, 0.3, registration_key="k")
    assert again == done and versions(client) == [1, 2]
    assert client.get_model_version(NAME, "2").tags["alias"] == CHAMPION


def test_registration_key_with_a_quote_is_refused(model_dir, store):
    with pytest.raises(ValueError, match="quote"):
        register(model_dir, store, 0.2, registration_key="it's")


def test_logged_model_ships_inference_code_only_and_loads_in_a_fresh_process(model_dir, store, tmp_path):
    import mlflow

    uri, _, _ = store
    result = register(model_dir, store, 0.2)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{result.version}", dst_path=str(tmp_path / "dl")))
    shipped = {p.relative_to(local / "code").as_posix() for p in (local / "code").rglob("*.py")}
    assert "gru4rec/persist.py" in shipped and "gru4rec/recommender.py" in shipped
    assert "gru4rec/__init__.py" in shipped
    assert not {"gru4rec/trainer.py", "gru4rec/jobs.py", "gru4rec/data/readers.py"} & shipped

    # A fresh interpreter outside the repository, with the editable install of the project
    # disabled: everything gru4rec must come from the model's own code directory.
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")
                            and "editable" not in getattr(f, "__name__", "")]
        import mlflow, pandas as pd
        mlflow.set_tracking_uri({uri!r})
        mlflow.set_registry_uri({uri!r})
        m = mlflow.pyfunc.load_model("models:/{NAME}@{CHAMPION}")
        out = m.predict(pd.DataFrame({{"items": [[101, 102], [], [999]]}}), params={{"k": 3}})
        import gru4rec
        print(json.dumps({{
            "items": out["items"].tolist(),
            "fallback": out["fallback"].tolist(),
            "unknown": out["unknown_items"].tolist(),
            "gru4rec": gru4rec.__file__,
            "loaded": sorted(n for n in sys.modules if n.startswith("gru4rec")),
        }}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [len(r) for r in out["items"]] == [3, 3, 3]
    assert out["fallback"] == [False, True, True] and out["unknown"] == [[], [], [999]]
    assert all(100 <= i < 100 + N_ITEMS for r in out["items"] for i in r)
    assert Path(out["gru4rec"]).parent.parent.name == "code", out["gru4rec"]  # the model's own copy
    assert "gru4rec.trainer" not in out["loaded"]


# ---------------------------------------------------------------- evidence, duplicates, promote and rollback


def test_head_to_head_evidence_and_warnings_are_recorded_as_tags(model_dir, store):
    _, _, client = store
    register(model_dir, store, 0.30)
    evidence = registry.Evidence(
        head_to_head=HeadToHead("1", 0.21, unknown_targets=17, n_targets=500, test_fingerprint=OTHER_FP),
        popularity=0.05,
        baselines={"popularity": 0.05, "item-knn": 0.4},
        min_gain=0.02,
    )
    r = register(model_dir, store, 0.25, fingerprint=OTHER_FP, evidence=evidence)
    assert r.alias == CHAMPION and r.champion_metric == 0.21
    assert r.warnings == ["WARNING: loses to the item-knn baseline on mrr@20 (0.2500 < 0.4000)"]
    tags = client.get_model_version(NAME, r.version).tags
    assert tags["head_to_head_champion_value"] == "0.21" and tags["head_to_head_unknown_targets"] == "17"
    assert tags["head_to_head_test_fingerprint"] == OTHER_FP and tags["min_gain"] == "0.02"
    assert tags["previous_champion"] == "1" and "WARNING" in tags["decision"]


def test_find_trained_sees_only_fully_registered_versions_of_the_key(model_dir, store):
    uri, _, client = store
    assert registry.find_trained(uri, NAME, "k1") is None  # no such model yet
    register(model_dir, store, 0.3, training_key="k1")
    register(model_dir, store, 0.2, training_key="k2")
    found = registry.find_trained(uri, NAME, "k1")
    assert found["version"] == "1" and found["aliases"] == [CHAMPION]
    assert registry.find_trained(uri, NAME, "k2")["aliases"] == [CHALLENGER]
    assert registry.find_trained(uri, NAME, "k3") is None


def test_download_model_dir_returns_the_logged_model(model_dir, store, tmp_path):
    uri, _, _ = store
    r = register(model_dir, store, 0.3)
    got = registry.download_model_dir(uri, NAME, r.version, tmp_path / "dl")
    assert (got / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()


def test_promote_and_rollback_move_the_alias_and_record_who_and_why(model_dir, store):
    uri, _, client = store
    for mrr in (0.3, 0.4, 0.35):  # v1 champion, v2 champion (replaced v1), v3 challenger
        register(model_dir, store, mrr)
    assert champion_version(client) == "2"
    back = registry.rollback(uri, NAME, reason="v2 recommends stale items", who="alice")
    assert back["champion"] == "1" and champion_version(client) == "1"
    # the version's role tag follows the alias (it read "champion" on v2 after the rollback)
    assert client.get_model_version(NAME, "1").tags["alias"] == "champion"
    assert client.get_model_version(NAME, "2").tags["alias"] == "challenger"
    rolled = json.loads(client.get_model_version(NAME, "2").tags["rolled_back"])
    assert rolled["by"] == "alice" and rolled["reason"] == "v2 recommends stale items" and rolled["to_version"] == "1"
    with pytest.raises(ValueError, match="replaced no earlier champion"):
        registry.rollback(uri, NAME, reason="again", who="alice")  # v1 was the first champion
    registry.promote(uri, NAME, "3", reason="A/B test won", who="bob")
    assert champion_version(client) == "3"
    assert [client.get_model_version(NAME, v).tags["alias"] for v in "13"] == ["challenger", "champion"]
    assert json.loads(client.get_model_version(NAME, "3").tags["promoted"])["by"] == "bob"
    assert registry.rollback(uri, NAME, reason="undo", who="bob")["champion"] == "1"
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        registry.promote(uri, NAME, "99", reason="typo", who="bob")
    assert champion_version(client) == "1"
