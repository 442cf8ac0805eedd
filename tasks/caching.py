"""Prefect cache policies keyed on content, and the check that a cache hit is still intact.

A cached task's key is the hash of (1) what it reads, by content — the source files' sha256, the
events table's sha256, the split's fingerprint — never by path; (2) its settings; (3) the source
of the task's module and of the library modules it runs, so a fix in the splitter invalidates old splits
by itself; (4) the workdir, so that each workdir's runs only point at files inside it.

Prefect returns a cached result without running the task; the result is a manifest path. Before
the flow uses it, `cached_or_recomputed` checks every file the manifest lists against its sha256
and reruns the task (refreshing the cache) when one is missing or changed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy

from gru4rec.io import sha256_file, sha256_json


def module_source_hash(modules: tuple[str, ...]) -> str:
    """sha256 over the source files of ``modules`` (a package counts with all its .py files)."""
    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(name)
        origin = Path(spec.origin)
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for f in files:
            h.update(str(f.relative_to(origin.parent)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


@dataclass
class ContentKey(CachePolicy):
    """Cache key = hash(content + settings from the task's inputs, the modules' code, the task's code).

    ``describe(inputs)`` returns a JSON-able description of the content and settings; when the task's
    ``use_cache`` input is False the policy gives no key, so nothing is cached or reused.
    """

    describe: Callable[[dict[str, Any]], Any] = field(default=lambda inputs: None)
    modules: tuple[str, ...] = ()

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any):
        if not inputs.get("use_cache", False):
            return None
        task_module = task_ctx.task.fn.__module__ if task_ctx else None
        modules = self.modules + ((task_module,) if task_module else ())
        return sha256_json(
            {
                "content": self.describe(inputs),
                "code": module_source_hash(modules),
                "scope": inputs.get("cache_scope"),
            }
        )


def listed_files_intact(manifest_path: str | Path) -> bool:
    """True when the manifest exists and every file it lists (with a sha256) is there, unchanged."""
    path = Path(manifest_path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    entries = [(t["file"], t["sha256"]) for t in manifest.get("tables", {}).values() if "sha256" in t]
    entries += [(name, f["sha256"]) for name, f in manifest.get("files", {}).items() if "sha256" in f]
    for file, digest in entries:
        p = Path(file) if Path(file).is_absolute() else path.parent / file
        if not p.is_file() or sha256_file(p) != digest:
            return False
    return True


def model_dir_intact(model_dir: str | Path) -> bool:
    """True when the model directory's weights and item table match the hashes in its config.json."""
    d = Path(model_dir)
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
        return sha256_file(d / "model.safetensors") == config["weights_sha256"] and sha256_file(
            d / "items.parquet"
        ) == config["items_sha256"]
    except (OSError, ValueError, KeyError):
        return False


def cached_or_recomputed(task_fn, intact: Callable[[Any], bool], *args: Any, **kwargs: Any) -> Any:
    """Run a cached task; when its (cached) result fails ``intact``, run it again with a fresh cache."""
    state = task_fn(*args, return_state=True, **kwargs)
    result = state.result()  # raises the task's error, as a plain call would
    # Only a result served from the cache can be stale; one just computed is not hashed again.
    if state.name == "Cached" and not intact(result):
        result = task_fn.with_options(refresh_cache=True)(*args, **kwargs)
    return result
