"""Model directory: save → load round trip, validation errors, atomic replace."""

from __future__ import annotations

import json
import os

import polars as pl
import pytest
import torch
from safetensors.torch import load_file, save_file

from gru4rec import persist
from gru4rec.errors import ConfigError, ModelFileError
from gru4rec.model import GRU4Rec, ModelConfig
from gru4rec.persist import load_model, save_model

N = 10


def make(embedding="constrained", seed=0, n=N):
    torch.manual_seed(seed)
    return GRU4Rec(ModelConfig(embedding=embedding, layers=[8, 6]), n)


def items_table(n=N):
    return pl.DataFrame(
        {
            "item_idx": pl.Series(range(n), dtype=pl.Int32),
            "item_id": pl.Series([1000 + 7 * i for i in range(n)], dtype=pl.Int64),
            "count": pl.Series([n - i for i in range(n)], dtype=pl.Int64),
        }
    )


def save(d, model, **kw):
    return save_model(
        d, model, {"model": model.cfg.model_dump(), "train": {"lr": 0.05}}, items_table(model.n_items), **kw
    )


def scores(model):
    model.eval()
    with torch.no_grad():
        h = model.init_hidden(3)
        for x in ([1, 2, 3], [4, 5, 6]):
            out, h = model.step(torch.tensor(x), h)
        return model.score(out)


@pytest.mark.parametrize("embedding", ["onehot", "separate", "constrained"])
def test_round_trip_identical_scores(tmp_path, embedding):
    model = make(embedding)
    save(tmp_path / "m", model, extra={"metrics": {"recall@20": 0.25}})
    loaded = load_model(tmp_path / "m")
    assert torch.equal(scores(model), scores(loaded.model))
    assert not loaded.model.training
    cfg = loaded.config
    assert cfg["format_version"] == 1 and cfg["n_items"] == N
    assert cfg["train"] == {"lr": 0.05} and cfg["extra"] == {"metrics": {"recall@20": 0.25}}
    assert cfg["model"]["embedding"] == embedding and cfg["package_version"] and cfg["created_at"]
    assert len(cfg["weights_sha256"]) == 64
    assert loaded.item_to_idx[1000 + 7 * 3] == 3
    assert loaded.items.equals(items_table())
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_save_refuses_inconsistent_input(tmp_path):
    model = make()
    with pytest.raises(ConfigError, match="does not describe the model"):
        save_model(tmp_path / "m", model, {"model": {"layers": [5]}}, items_table())
    with pytest.raises(ModelFileError, match="has 9 rows"):
        save_model(tmp_path / "m", model, {"model": model.cfg.model_dump()}, items_table(9))
    assert not (tmp_path / "m").exists()


# --- validation on load ----------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    d = tmp_path / "m"
    save(d, make())
    return d


def edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "items.parquet"])
def test_missing_file(saved, name):
    (saved / name).unlink()
    with pytest.raises(ModelFileError, match=f"incomplete: {name} is missing"):
        load_model(saved)


def test_missing_directory(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_truncated_weights(saved):
    w = saved / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="model.safetensors is corrupt or truncated"):
        load_model(saved)


def test_garbage_weights(saved):
    (saved / "model.safetensors").write_bytes(b"\x00\x01not a safetensors file" * 10)
    with pytest.raises(ModelFileError, match="model.safetensors is corrupt or truncated"):
        load_model(saved)


def test_tampered_weights(saved):
    w = saved / "model.safetensors"
    tensors = load_file(str(w))
    tensors["item_out"][0, 0] += 1.0
    save_file(tensors, str(w))
    with pytest.raises(ModelFileError, match="does not match the weights_sha256 in config.json"):
        load_model(saved)


def test_shape_mismatch(saved):
    edit_config(saved, n_items=N + 1)
    with pytest.raises(ModelFileError, match=r"shape mismatch for item_out: file \(10, 6\) vs config \(11, 6\)"):
        load_model(saved)


def test_layer_mismatch(saved):
    cfg = json.loads((saved / "config.json").read_text())
    edit_config(saved, model={**cfg["model"], "layers": [8, 7]})
    with pytest.raises(ModelFileError, match="shape mismatch for"):
        load_model(saved)


def test_embedding_mismatch(saved):
    cfg = json.loads((saved / "config.json").read_text())
    edit_config(saved, model={**cfg["model"], "embedding": "separate"})
    with pytest.raises(ModelFileError, match="lacks tensor.*item_in"):
        load_model(saved)


@pytest.mark.parametrize("version", [2, None, "1"])
def test_wrong_format_version(saved, version):
    edit_config(saved, format_version=version)
    with pytest.raises(ModelFileError, match="format_version .* this version of gru4rec reads 1"):
        load_model(saved)


def test_bad_json(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="config.json is not valid JSON"):
        load_model(saved)


def test_items_row_count(saved):
    items_table(N - 1).write_parquet(saved / "items.parquet")
    with pytest.raises(ModelFileError, match="items.parquet does not match"):
        load_model(saved)
    cfg = json.loads((saved / "config.json").read_text())
    del cfg["items_sha256"]
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="items.parquet has 9 rows but the config has n_items=10"):
        load_model(saved)


# --- atomic replace ---------------------------------------------------------------------------
def test_replace_existing(tmp_path):
    d = tmp_path / "m"
    save(d, make(seed=1))
    second = make(seed=2)
    save(d, second)
    assert torch.equal(scores(load_model(d).model), scores(second))
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_failure_while_writing_keeps_old(tmp_path, monkeypatch):
    d = tmp_path / "m"
    first = make(seed=1)
    save(d, first)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(persist, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save(d, make(seed=2))
    assert torch.equal(scores(load_model(d).model), scores(first))
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_failure_while_swapping_keeps_old(tmp_path, monkeypatch):
    d = tmp_path / "m"
    first = make(seed=1)
    save(d, first)
    calls = []
    real = persist._rename

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # renaming the new directory into place
            raise OSError("crash between renames")
        return real(src, dst)

    monkeypatch.setattr(persist, "_rename", flaky)
    with pytest.raises(OSError, match="crash between renames"):
        save(d, make(seed=2))
    assert torch.equal(scores(load_model(d).model), scores(first))
    assert sorted(os.listdir(tmp_path)) == ["m"]


# --- what may be replaced, permissions, leftovers --------------------------------------------------
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_model_directory_gets_normal_permissions(tmp_path, umask_022):
    d = save(tmp_path / "m", make(), history=[{"epoch": 1}])
    assert os.stat(d).st_mode & 0o777 == 0o755
    modes = {p.name: p.stat().st_mode & 0o777 for p in d.iterdir()}
    assert modes == {name: 0o644 for name in ("model.safetensors", "config.json", "items.parquet", "history.json")}
    assert json.loads((d / "history.json").read_text()) == [{"epoch": 1}]


def test_a_directory_that_is_not_ours_is_not_replaced(tmp_path):
    d = tmp_path / "mine"
    (d / "sub").mkdir(parents=True)
    (d / "important.txt").write_text("keep me")
    with pytest.raises(
        ConfigError, match=r"is not empty and is not a model directory \(it holds important.txt, sub/\)"
    ):
        save(d, make())
    assert (d / "important.txt").read_text() == "keep me" and (d / "sub").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["mine"]
    save(d, make(), overwrite=True)  # asked for explicitly
    assert sorted(os.listdir(d)) == ["config.json", "items.parquet", "model.safetensors"]


def test_a_model_directory_with_other_files_is_not_replaced(tmp_path):
    d = save(tmp_path / "m", make(seed=1))
    save(d, make(seed=2))  # ours: replaced
    (d / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="also holds notes.txt"):
        save(d, make(seed=3))
    assert (d / "notes.txt").exists()
    (tmp_path / "empty").mkdir()
    save(tmp_path / "empty", make())  # an empty directory may be filled
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelFileError, match="exists and is not a directory"):
        save(tmp_path / "file", make())


def test_clean_leftovers_removes_only_our_temporary_names(tmp_path):
    d = save(tmp_path / "m", make(seed=1))
    killed_write = tmp_path / ".m.tmp-0123456789ab"
    superseded = tmp_path / ".m.old-ba9876543210"
    not_ours = [tmp_path / ".m.tmp-mine", tmp_path / ".other.tmp-0123456789ab", tmp_path / "m.tmp-0123456789ab"]
    for p in [killed_write, superseded, *not_ours]:
        p.mkdir()
    assert sorted(persist.clean_leftovers(d)) == [".m.old-ba9876543210", ".m.tmp-0123456789ab"]
    assert all(p.is_dir() for p in not_ours) and not killed_write.exists() and not superseded.exists()

    # Killed between the renames of a replace: the previous model was put aside and is put back.
    os.rename(d, tmp_path / ".m.old-00000000000a")
    (tmp_path / ".m.tmp-00000000000a").mkdir()
    assert persist.clean_leftovers(d) == [".m.tmp-00000000000a"]
    assert torch.equal(scores(load_model(d).model), scores(make(seed=1)))
