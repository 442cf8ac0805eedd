"""Caching keyed on content + settings + code, and cache hits that verify what they return."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.config import PipelineConfig, TrainingSettings
from gru4rec.data.config import IngestConfig, SplitConfig
from tasks.caching import ContentKey, listed_files_intact, model_dir_intact, module_source_hash
from tests.synthetic import synthetic_movielens

TINY = {"model.layers": "[8]", "train.n_sample": "16", "train.batch_size": "16", "train.epochs": 1,
        "train.threads": 1, "train.device": "cpu"}


def _config(workdir: Path, source: Path, **settings) -> PipelineConfig:
    split = settings.pop("split", SplitConfig())
    return PipelineConfig(
        ingest=IngestConfig(source=str(source)),
        split=split,
        training=TrainingSettings(overrides=TINY),
        workdir=str(workdir),
        **settings,
    )


# --- unit: the policy and the checks ------------------------------------------------------------


def test_module_source_hash_follows_the_code(tmp_path, monkeypatch):
    pkg = tmp_path / "cachedpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "step.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = module_source_hash(("cachedpkg",))
    assert module_source_hash(("cachedpkg",)) == before
    (pkg / "step.py").write_text("VALUE = 2\n")
    assert module_source_hash(("cachedpkg",)) != before
    assert module_source_hash(("cachedpkg.step",)) != module_source_hash(("cachedpkg",))


def test_content_key_covers_content_settings_scope_and_use_cache():
    policy = ContentKey(describe=lambda inputs: inputs["content"], modules=("gru4rec.io",))
    key = lambda **inputs: policy.compute_key(None, {"use_cache": True, "cache_scope": "w"} | inputs, {})  # noqa: E731
    assert key(content="a") == key(content="a")
    assert key(content="a") != key(content="b")
    assert key(content="a") != key(content="a", cache_scope="other-workdir")
    assert policy.compute_key(None, {"use_cache": False, "content": "a"}, {}) is None


def test_listed_files_intact(tmp_path):
    from gru4rec.io import sha256_file

    (tmp_path / "t.parquet").write_bytes(b"abc")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"files": {"t.parquet": {"sha256": sha256_file(tmp_path / "t.parquet")}}}))
    assert listed_files_intact(manifest)
    (tmp_path / "t.parquet").write_bytes(b"abd")
    assert not listed_files_intact(manifest)
    (tmp_path / "t.parquet").unlink()
    assert not listed_files_intact(manifest)
    assert not listed_files_intact(tmp_path / "missing.json")
    assert not model_dir_intact(tmp_path)


# --- integration: real flows ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("sources")
    return synthetic_movielens(d / "a" / "u.data", seed=0), synthetic_movielens(d / "b" / "u.data", seed=1)


def test_data_cache_hit_and_misses(prefect_harness, sources, tmp_path):
    from flows.training import training_pipeline

    a, b = sources
    first = training_pipeline(_config(tmp_path, a))
    again = training_pipeline(_config(tmp_path, a))
    assert again["split_dir"] == first["split_dir"], "same content + settings + code: a cache hit"
    other_file = training_pipeline(_config(tmp_path, b))
    assert other_file["split_dir"] != first["split_dir"]
    assert other_file["split_fingerprint"] != first["split_fingerprint"]
    other_setting = training_pipeline(_config(tmp_path, a, split=SplitConfig(min_item_support=3)))
    assert other_setting["split_dir"] != first["split_dir"]
    other_workdir = training_pipeline(_config(tmp_path / "elsewhere", a))
    assert Path(other_workdir["split_dir"]).is_relative_to(tmp_path / "elsewhere")


def test_changed_code_is_a_cache_miss(prefect_harness, sources, tmp_path, monkeypatch):
    import tasks.caching
    from flows.training import training_pipeline

    a, _ = sources
    first = training_pipeline(_config(tmp_path, a))
    real = tasks.caching.module_source_hash

    def splitter_fixed(modules):  # as if gru4rec/data/splitter.py had been edited
        return real(modules) + ("-fixed" if "gru4rec.data" in modules else "")

    monkeypatch.setattr(tasks.caching, "module_source_hash", splitter_fixed)
    second = training_pipeline(_config(tmp_path, a))
    assert second["split_dir"] != first["split_dir"]


def test_corrupted_or_deleted_cached_split_is_recomputed(prefect_harness, sources, tmp_path):
    from flows.training import training_pipeline

    a, _ = sources
    first = training_pipeline(_config(tmp_path, a))
    train_file = Path(first["split_dir"]) / "train.parquet"
    train_file.write_bytes(train_file.read_bytes()[:-10])  # truncated after it was cached
    second = training_pipeline(_config(tmp_path, a))
    assert second["split_dir"] != first["split_dir"] and listed_files_intact(Path(second["split_dir"]) / "manifest.json")
    assert second["split_fingerprint"] == first["split_fingerprint"]
    for f in Path(second["split_dir"]).iterdir():
        f.unlink()
    third = training_pipeline(_config(tmp_path, a))
    assert third["split_dir"] not in (first["split_dir"], second["split_dir"])


def test_training_cache_is_keyed_on_the_data_even_without_data_caching(prefect_harness, sources, tmp_path):
    from flows.training import training_pipeline

    a, b = sources
    settings = dict(cache_data=False, cache_training=True)
    first = training_pipeline(_config(tmp_path, a, **settings))
    on_b = training_pipeline(_config(tmp_path, b, **settings))
    assert on_b["model_dir"] != first["model_dir"], "other data must not get the earlier run's model"
    trained_on = json.loads((Path(on_b["model_dir"]) / "config.json").read_text())["extra"]["split_fingerprint"]
    assert trained_on == on_b["split_fingerprint"]
    on_a_again = training_pipeline(_config(tmp_path, a, **settings))
    assert on_a_again["split_dir"] != first["split_dir"]  # data not cached: split again...
    # ...same content, same config and code: nothing is trained or registered again
    assert on_a_again["registration"]["registered"] is False
    assert on_a_again["registration"]["version"] == first["registration"]["version"]
