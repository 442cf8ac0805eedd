"""A trained model as a directory: weights (safetensors), config (JSON) and the item index (Parquet).

    model_dir/
      model.safetensors   the state dict (safetensors: no pickle, nothing executed on load)
      config.json         {"model": ModelConfig, "train": {...}, "n_items", "format_version",
                           "package_version", "created_at", "weights_sha256", "items_sha256", "extra"}
      items.parquet       item_idx, item_id, count (+ any other columns of the split's items table)

The directory is written whole into a temporary sibling and renamed into place, so a reader sees
either the old model or the new one, never a mixture. Only a directory of ours (recognised by its
config.json; holding nothing but our files) or an empty one is replaced, unless ``overwrite=True``. Loading checks everything it can (files,
format version, hashes, tensor names and shapes against the config, the item table) and reports
each problem as a :class:`~gru4rec.errors.ModelFileError` naming the file and what is wrong.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from gru4rec.errors import ConfigError, ModelFileError, raise_if_transient
from gru4rec.faults import kill_point
from gru4rec.io import publish_mode, sha256_file
from gru4rec.model import GRU4Rec, ModelConfig

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ITEMS_FILE = "items.parquet"
HISTORY_FILE = "history.json"
MODEL_FILES = (WEIGHTS_FILE, CONFIG_FILE, ITEMS_FILE)
OUR_FILES = frozenset((*MODEL_FILES, HISTORY_FILE))  # all save_model writes (history.json when given)
ITEM_COLUMNS = ("item_idx", "item_id", "count")

# Indirection so tests can simulate a failure between the renames of an atomic replace.
_rename = os.rename


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("gru4rec-pipeline")
    except Exception:  # not installed (running from a source tree)
        return "0+unknown"


@dataclass
class LoadedModel:
    model: GRU4Rec
    config: dict
    items: pl.DataFrame
    item_to_idx: dict[Any, int]
    directory: Path | None = None
    item_ids: np.ndarray = field(init=False, repr=False)  # item_idx → original id
    counts: np.ndarray = field(init=False, repr=False)  # train count per item_idx

    def __post_init__(self) -> None:
        self.item_ids = self.items["item_id"].to_numpy()
        self.counts = self.items["count"].to_numpy().astype(np.int64)

    @property
    def n_items(self) -> int:
        return self.model.n_items

    @property
    def exclude_seen(self) -> bool:
        """Whether recommendations leave out the session's own items by default: decided when the
        model was trained (``extra.seen_items`` in config.json, see `gru4rec.seen`); a model saved
        before that was recorded keeps them (False), as it always did."""
        seen = (self.config.get("extra") or {}).get("seen_items") or {}
        return bool(seen.get("exclude_seen", False))


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------
def _check_items(items: pl.DataFrame, n_items: int, where: str) -> None:
    missing = [c for c in ITEM_COLUMNS if c not in items.columns]
    if missing:
        raise ModelFileError(f"{where} lacks column(s) {', '.join(missing)} (needs {', '.join(ITEM_COLUMNS)})")
    if items.height != n_items:
        raise ModelFileError(f"{where} has {items.height} rows but the model has n_items={n_items}")
    idx = items["item_idx"].to_numpy()
    if not np.array_equal(idx, np.arange(n_items)):
        raise ModelFileError(f"{where}: item_idx must be 0..{n_items - 1} in order")
    if items["item_id"].null_count() or items["item_id"].n_unique() != n_items:
        raise ModelFileError(f"{where}: item_id must be unique and non-null")


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_dir(tmp: Path, model: GRU4Rec, config: dict, items: pl.DataFrame, history: list | None) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
    items.write_parquet(tmp / ITEMS_FILE, compression="zstd", statistics=True)
    config["weights_sha256"] = sha256_file(tmp / WEIGHTS_FILE)
    config["items_sha256"] = sha256_file(tmp / ITEMS_FILE)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n", encoding="utf-8")
    names = list(MODEL_FILES)
    if history is not None:
        (tmp / HISTORY_FILE).write_text(json.dumps(history, indent=2, default=str) + "\n", encoding="utf-8")
        names.append(HISTORY_FILE)
    for name in names:
        publish_mode(tmp / name)  # safetensors writes 0600: the files get a plain open()'s mode
        _fsync(tmp / name)


def save_model(
    model_dir: str | os.PathLike,
    model: GRU4Rec,
    config: dict,
    items: pl.DataFrame,
    extra: dict | None = None,
    *,
    history: list | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the model directory atomically (replacing an existing model directory); return its path.

    ``config`` is the full config dict ({"model": ModelConfig dump, "train": {...}}); its "model"
    part must describe ``model`` (it is filled from ``model.cfg`` when absent). ``items`` is the
    split's items table (one row per item_idx). ``extra`` (JSON-able: metrics, split fingerprint,
    …) is stored under "extra" in config.json; ``history`` (the per-epoch records) as history.json.
    A destination that is neither empty nor a model directory is refused unless ``overwrite``
    (see `check_destination`).
    """
    dest = Path(model_dir)
    check_destination(dest, overwrite)
    config = json.loads(json.dumps(dict(config), default=str))  # a plain, detached copy
    cfg = _model_config_of(config, model)
    _check_items(items, model.n_items, "items table")
    config["model"] = cfg.model_dump(mode="json")
    config.setdefault("train", {})
    config.update(
        n_items=model.n_items,
        format_version=FORMAT_VERSION,
        package_version=package_version(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        extra=json.loads(json.dumps(extra or {}, default=str)),
    )
    _replace_dir(dest, lambda tmp: _write_dir(tmp, model, config, items, history))
    return dest


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory save_model wrote: its config.json says so."""
    try:
        config = json.loads((Path(path) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and all(k in config for k in ("format_version", "model", "weights_sha256"))


def _listing(d: Path, names: list[str]) -> str:
    shown = [n + ("/" if (d / n).is_dir() else "") for n in names[:3]]
    return ", ".join(shown) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_destination(dest: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse to replace what is not ours: ``dest`` must be absent, an empty directory, or a model
    directory holding only our files; ``overwrite=True`` (the CLI's --overwrite) lifts the refusal."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ModelFileError(f"cannot save the model: {dest} exists and is not a directory")
    if overwrite or not dest.is_dir():
        return
    entries = sorted(p.name for p in dest.iterdir())
    if not entries:
        return
    if not is_model_dir(dest):
        raise ConfigError(
            f"{dest} is not empty and is not a model directory (it holds {_listing(dest, entries)}): "
            "refusing to replace it; choose another output directory, or pass --overwrite to replace it"
        )
    foreign = [n for n in entries if n not in OUR_FILES]
    if foreign:
        raise ConfigError(
            f"model directory {dest} also holds {_listing(dest, foreign)}, which replacing it would delete: "
            "move them away, choose another output directory, or pass --overwrite"
        )


def _model_config_of(config: dict, model: GRU4Rec) -> ModelConfig:
    """The config's "model" part (``model.cfg`` when absent), which must describe ``model``."""
    model_part = config.get("model")
    if model_part is None:
        model_part = model.cfg.model_dump(mode="json")
    try:
        cfg = ModelConfig.model_validate(model_part)
    except ValidationError as e:
        raise ConfigError(f"config['model'] is not a valid model config: {e}") from None
    if cfg != model.cfg:
        raise ConfigError(
            f"config['model'] ({cfg.model_dump()}) does not describe the model ({model.cfg.model_dump()})"
        )
    return cfg


def _replace_dir(dest: Path, write: Callable[[Path], None]) -> None:
    """Fill a temporary sibling with ``write`` and rename it to ``dest`` (putting any old one aside first).

    A reader sees the old directory or the new one, never a mixture; on failure the old one is restored
    and the temporary one removed.
    """
    if dest.exists() and not dest.is_dir():
        raise ModelFileError(f"cannot save the model: {dest} exists and is not a directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    tmp = dest.parent / f".{dest.name}.tmp-{token}"  # the names clean_leftovers looks for
    old = dest.parent / f".{dest.name}.old-{token}"
    tmp.mkdir()
    publish_mode(tmp, directory=True)
    try:
        write(tmp)
        _fsync(tmp)
        kill_point("model-dir-write")  # the new directory complete under its temporary name
        if dest.exists():
            _rename(dest, old)
            kill_point("model-dir-replace")  # the old one put aside, the new one not yet in place
            try:
                _rename(tmp, dest)
            except BaseException:
                _rename(old, dest)  # put the previous model back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            _rename(tmp, dest)
        _fsync(dest.parent)  # make the renames durable
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_leftovers(dest: str | os.PathLike) -> list[str]:
    """Remove what a killed `_replace_dir` left beside ``dest``; the names of what was removed.

    Only our exact names count: ``.NAME.tmp-<12 hex>`` (a half-written model: removed) and
    ``.NAME.old-<12 hex>`` (the previous model, put aside: removed when ``dest`` exists, else the
    newest is renamed back to ``dest``). Call it while no other process writes ``dest``.
    """
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.(tmp|old)-[0-9a-f]{{12}}")
    kinds = {
        p: m[1] for p in dest.parent.iterdir() if (m := pattern.fullmatch(p.name)) and p.is_dir() and not p.is_symlink()
    }
    found = sorted(kinds, key=lambda p: p.stat().st_mtime)
    old = [p for p in found if kinds[p] == "old"]
    if old and not dest.exists():
        _rename(old.pop(), dest)  # killed between the renames: the previous model goes back
    removed = [p for p in found if p.exists()]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in removed]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def read_model_config(model_dir: str | os.PathLike) -> dict:
    """config.json of a model directory, with its format version checked."""
    d = Path(model_dir)
    if not d.is_dir():
        raise ModelFileError(f"model directory {d} does not exist (or is not a directory)")
    missing = [n for n in MODEL_FILES if not (d / n).is_file()]
    if missing:
        raise ModelFileError(
            f"model directory {d} is incomplete: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
        )
    path = d / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path}: config.json is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: config.json must hold a JSON object")
    version = config.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ModelFileError(
            f"{path}: config.json has format_version {version!r}; this version of gru4rec reads "
            f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))} (saved by package {config.get('package_version', '?')})"
        )
    for key in ("model", "n_items", "weights_sha256"):
        if key not in config:
            raise ModelFileError(f"{path}: config.json lacks {key!r}")
    return config


def load_model(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load and check a model directory written by :func:`save_model`; the model is in eval mode."""
    d = Path(model_dir)
    config = read_model_config(d)
    cfg, n_items = _checked_model_config(config, d / CONFIG_FILE)
    tensors = _read_weights(d / WEIGHTS_FILE, config)
    model = _build_model(cfg, n_items, tensors, d / WEIGHTS_FILE)
    model = model.to(device)
    model.eval()
    items = _read_items(d / ITEMS_FILE, config, n_items)
    item_to_idx = dict(zip(items["item_id"].to_list(), range(n_items)))
    return LoadedModel(model=model, config=config, items=items, item_to_idx=item_to_idx, directory=d)


def _checked_model_config(config: dict, cpath: Path) -> tuple[ModelConfig, int]:
    """(model config, n_items) from config.json, both checked."""
    try:
        cfg = ModelConfig.model_validate(config["model"])
    except ValidationError as e:
        raise ModelFileError(f"{cpath}: config.json 'model' is not a valid model config: {e}") from None
    n_items = config["n_items"]
    if not isinstance(n_items, int) or isinstance(n_items, bool) or n_items <= 0:
        raise ModelFileError(f"{cpath}: config.json n_items must be a positive integer, got {n_items!r}")
    return cfg, n_items


def _read_weights(wpath: Path, config: dict) -> dict[str, torch.Tensor]:
    """The state dict in model.safetensors, which must be the file that was saved (weights_sha256)."""
    try:
        tensors = load_file(str(wpath))
    except Exception as e:  # safetensors raises SafetensorError / OSError for damaged files
        raise_if_transient(e)
        raise ModelFileError(f"{wpath}: model.safetensors is corrupt or truncated ({e})") from None
    got = sha256_file(wpath)
    if got != config["weights_sha256"]:
        raise ModelFileError(
            f"{wpath}: model.safetensors does not match the weights_sha256 in config.json "
            f"(file {got[:12]}…, config {str(config['weights_sha256'])[:12]}…): changed after saving"
        )
    return tensors


def _build_model(cfg: ModelConfig, n_items: int, tensors: dict[str, torch.Tensor], wpath: Path) -> GRU4Rec:
    """The model the config describes, holding ``tensors`` once their names, shapes and dtypes are checked."""
    # On the meta device: no memory is allocated for weights that are replaced right away.
    with torch.device("meta"):
        model = GRU4Rec(cfg, n_items)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise ModelFileError(
            f"{wpath}: model.safetensors lacks tensor(s) {', '.join(missing)} that the config "
            f"(embedding={cfg.embedding}, layers={cfg.layers}, output_bias={cfg.output_bias}) needs"
        )
    if unexpected:
        raise ModelFileError(f"{wpath}: model.safetensors has tensor(s) the config does not: {', '.join(unexpected)}")
    for name, shape in expected.items():
        fshape = tuple(tensors[name].shape)
        if fshape != shape:
            raise ModelFileError(f"{wpath}: shape mismatch for {name}: file {fshape} vs config {shape}")
        if not tensors[name].is_floating_point():
            raise ModelFileError(f"{wpath}: tensor {name} has dtype {tensors[name].dtype}, expected floating point")
    model.load_state_dict(tensors, strict=True, assign=True)
    return model


def _read_items(ipath: Path, config: dict, n_items: int) -> pl.DataFrame:
    """items.parquet, checked against its hash (when recorded) and against n_items."""
    try:
        items = pl.read_parquet(ipath)
    except Exception as e:
        raise_if_transient(e)
        raise ModelFileError(f"{ipath}: items.parquet cannot be read ({e})") from None
    if "items_sha256" in config and sha256_file(ipath) != config["items_sha256"]:
        raise ModelFileError(
            f"{ipath}: items.parquet does not match the items_sha256 in config.json (changed after saving)"
        )
    try:
        _check_items(items, n_items, f"{ipath}: items.parquet")
    except ModelFileError as e:
        # _check_items speaks of the model (saving); here the count comes from config.json.
        raise ModelFileError(str(e).replace("model has n_items", "config has n_items")) from None
    return items
