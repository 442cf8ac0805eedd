"""Hyperparameter search spaces of GRU4Rec, per loss and optimiser, and the tuned preset they lead to.

The ranges are those of Hidasi & Karatzoglou (2018) and of the authors' parameter-optimisation
spaces for their PyTorch GRU4Rec: one GRU layer of 64–512 units (here from 32, so that the tutorial's
50 lies in it), batch 32–256, embedding dropout 0–0.5, hidden dropout 0–0.7, Adagrad's learning rate
0.01–0.3 (log scale) and momentum 0–0.9, 0–4096 shared negatives drawn ∝ popularity^alpha with
alpha 0–1; for BPR-max the score regularisation 0–2 and the final activation (linear, ELU 0.5 or
ELU 1); for cross-entropy the logQ correction 0–1 (softmax is its final activation). With Adam (the
tutorial preset) the learning rate is searched in 1e-4–1e-2 and there is no momentum. Everything
else — the embedding, the optimiser itself — comes from the base preset.

A space is plain data (`search_space(loss, optimizer)`); `suggest_overrides(trial, loss)` asks any
object with Optuna's ``suggest_int`` / ``suggest_float`` / ``suggest_categorical`` for one value of
each and returns dotted preset overrides (``{"train.lr": 0.07, "model.layers": [224], ...}``);
`base_params` gives a configuration's own values, so that a search can try its starting point
first. This module imports neither Optuna nor anything of the pipeline."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gru4rec.errors import ConfigError


@dataclass(frozen=True)
class Param:
    """One searched setting: ``kind`` is "int", "float" or "categorical"."""

    key: str  # dotted preset key, e.g. "train.lr"
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def name(self) -> str:  # the Optuna parameter name: the setting without its section
        return self.key.split(".", 1)[1]

    def describe(self) -> str:
        if self.kind == "categorical":
            return "{" + ", ".join(map(str, self.choices)) + "}"
        text = f"{self.low:g}–{self.high:g}"
        if self.log:
            text += " (log)"
        elif self.step:
            text += f" step {self.step:g}"
        return text


_ARCHITECTURE = (
    Param("model.layers", "int", 32, 512, step=2),  # units of the one GRU layer (50, 100 and 224 on the grid)
    Param("train.batch_size", "int", 32, 256, step=16),
    Param("model.dropout_embedding", "float", 0.0, 0.5, step=0.05),
    Param("model.dropout_hidden", "float", 0.0, 0.7, step=0.05),
)
_OPTIMISER = {
    "adagrad": (
        Param("train.lr", "float", 0.01, 0.3, log=True),
        Param("train.momentum", "float", 0.0, 0.9, step=0.05),
    ),
    "adam": (Param("train.lr", "float", 1e-4, 1e-2, log=True),),  # Adam's usual range; it takes no momentum
}
_SAMPLING = (
    Param("train.n_sample", "categorical", choices=(0, 512, 1024, 2048, 4096)),
    Param("train.sample_alpha", "float", 0.0, 1.0, step=0.1),
)
_LOSS = {
    "bpr-max": (
        Param("train.bpreg", "float", 0.0, 2.0, step=0.05),
        Param("train.elu", "categorical", choices=(0.0, 0.5, 1.0)),  # final activation: linear / ELU(0.5) / ELU(1)
    ),
    "cross-entropy": (Param("train.logq", "float", 0.0, 1.0, step=0.05),),
}


def search_space(loss: str, optimizer: str = "adagrad") -> tuple[Param, ...]:
    if loss not in _LOSS:
        raise ConfigError(f"no search space for loss {loss!r}; spaces exist for: {', '.join(_LOSS)}")
    if optimizer not in _OPTIMISER:
        raise ConfigError(f"no search space for optimizer {optimizer!r}; spaces exist for: {', '.join(_OPTIMISER)}")
    return _ARCHITECTURE + _OPTIMISER[optimizer] + _SAMPLING + _LOSS[loss]


def kept_as_given(config: Any, fixed: Iterable[str]) -> set[str]:
    """The settings a search leaves as they are: ``fixed`` (the ones the user set) and those that then
    do nothing. With the full softmax kept (``n_sample="full"`` fixed) nothing is sampled, so the
    sampling exponent and logQ correction have no effect; searching them would only add noise to
    TPE and to the parameter importances."""
    kept = set(fixed)
    if "train.n_sample" in kept and config.train.n_sample == "full":
        kept |= {"train.sample_alpha", "train.logq"}
    return kept


def _suggest(trial: Any, p: Param) -> Any:
    if p.kind == "int":
        return trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    if p.kind == "float":
        if p.log:
            return trial.suggest_float(p.name, p.low, p.high, log=True)
        return trial.suggest_float(p.name, p.low, p.high, step=p.step)
    return trial.suggest_categorical(p.name, list(p.choices))


def _value(p: Param, value: Any) -> Any:
    """A sampled value as the setting takes it: one layer as a list; a float on a grid as 0.7, not
    0.7000000000000001 (which Optuna returns and stores)."""
    if p.key == "model.layers":
        return [int(value)]
    if p.kind == "float" and p.step:
        return round(float(value), 10)
    return value


def suggest_overrides(trial: Any, loss: str, fixed: Iterable[str] = (), optimizer: str = "adagrad") -> dict[str, Any]:
    """One sample of the loss's space as dotted preset overrides (model.layers as a one-layer list);
    the keys in ``fixed`` (settings the search keeps as given) are neither sampled nor returned."""
    fixed = set(fixed)
    overrides: dict[str, Any] = {}
    for p in search_space(loss, optimizer):
        if p.key in fixed:
            continue
        overrides[p.key] = _value(p, _suggest(trial, p))
    return overrides


def overrides_from_params(params: dict[str, Any], loss: str, optimizer: str = "adagrad") -> dict[str, Any]:
    """Optuna's stored params of a trial (names without section) back to dotted overrides."""
    out = {}
    for p in search_space(loss, optimizer):
        if p.name in params:
            out[p.key] = _value(p, params[p.name])
    return out


def _contains(p: Param, value: Any) -> bool:
    """Whether ``value`` is one Optuna can sample from ``p`` (in range, on its grid, one of its choices)."""
    if p.kind == "categorical":
        return not isinstance(value, bool) and value in p.choices
    if isinstance(value, bool) or not isinstance(value, int | float) or not p.low <= value <= p.high:
        return False
    if p.step:
        steps = (value - p.low) / p.step
        return abs(steps - round(steps)) < 1e-9
    return True


def base_params(config: Any, loss: str, fixed: Iterable[str] = ()) -> tuple[dict[str, Any], list[str]]:
    """The starting configuration's own values as Optuna params, so a search can try it as its first
    trial, and the settings whose value the space cannot hold (then it cannot be tried).

    ``config`` is a `Gru4RecConfig` (anything with ``.model`` / ``.train``); ``fixed`` as in
    `suggest_overrides`."""
    fixed = set(fixed)
    params: dict[str, Any] = {}
    outside: list[str] = []
    for p in search_space(loss, config.train.optimizer):
        if p.key in fixed:
            continue
        section, name = p.key.split(".", 1)
        value = getattr(getattr(config, section), name)
        if p.key == "model.layers":  # the space has one layer
            value = value[0] if len(value) == 1 else value
        if _contains(p, value):
            params[p.name] = value
        else:
            outside.append(f"{p.key} {value!r} (searched: {p.describe()})")
    return params, outside
