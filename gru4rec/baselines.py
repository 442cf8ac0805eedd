"""Non-neural baselines evaluated by the same code as GRU4Rec.

`ItemKNN` is the session-based item-to-item baseline of the GRU4Rec paper: the next item is
scored by its co-occurrence similarity with the session's current item,
``sim(i, j) = cooc(i, j) / (supp(i)^alpha * supp(j)^(1 - alpha) + lam)``, where ``cooc`` counts
training sessions holding both items and ``supp`` the sessions holding each. It is a
`StepScorer`, so `evaluate_model` runs it on exactly the same targets as GRU4Rec; its state is
empty because it only looks at the current item.

The session-kNN family (SKNN, V-SKNN, STAN, VSTAN) lives in `gru4rec.session_knn`: one
vectorised `SessionKNN` scorer, each method a `SessionKNNConfig` (defaults in `KNN_DEFAULTS`).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import scipy.sparse as sp
import torch

from gru4rec.data.split_dir import SessionArrays
from gru4rec.evaluate import PopularityModel, StepScorer
from gru4rec.session_knn import KNN_DEFAULTS, SessionKNN


class ItemKNN(StepScorer):
    def __init__(self, sessions: SessionArrays, n_items: int, alpha: float = 0.5, lam: float = 20.0):
        self.n_items = n_items
        self.alpha, self.lam = alpha, lam
        n_sessions = max(sessions.n_sessions, 1)
        session_of_event = np.repeat(np.arange(sessions.n_sessions), np.diff(sessions.offsets))
        # Binary session × item incidence (an item repeated inside a session counts once).
        incidence = sp.csr_matrix(
            (np.ones(len(session_of_event), np.float32), (session_of_event, sessions.items)),
            shape=(n_sessions, n_items),
        )
        incidence.data[:] = 1.0  # duplicates were summed by the constructor
        cooc = (incidence.T @ incidence).tocoo()
        support = np.asarray(incidence.sum(axis=0)).ravel()
        keep = cooc.row != cooc.col  # an item is not its own neighbour
        i, j, c = cooc.row[keep], cooc.col[keep], cooc.data[keep]
        sim = c / (support[i] ** alpha * support[j] ** (1 - alpha) + lam)
        self.sim = sp.csr_matrix((sim.astype(np.float32), (i, j)), shape=(n_items, n_items))
        self.device = torch.device("cpu")

    # The evaluator's scorer interface: the state is empty, only the current item matters.
    def begin(self, device: torch.device) -> None:
        self.device = torch.device(device)

    def init_state(self, batch_size: int, device: torch.device) -> list[torch.Tensor]:
        return []

    def step(self, items: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        rows = self.sim[items.cpu().numpy()].toarray()
        return torch.from_numpy(rows).to(self.device), state


# Every baseline by name; evaluation builds each from the same inputs. Adding a baseline = a class
# above plus one entry here (and in BaselineName).
BaselineName = Literal["popularity", "item-knn", "sknn", "v-sknn", "stan", "vstan"]
BASELINES: tuple[str, ...] = get_args(BaselineName)


def build_baseline(name: str, *, train_sessions: SessionArrays, n_items: int, item_counts) -> object:
    """A baseline scorer trained on ``train_sessions`` (the data the model was trained on)."""
    if name == "popularity":
        return PopularityModel(item_counts)
    if name == "item-knn":
        return ItemKNN(train_sessions, n_items)
    if name in KNN_DEFAULTS:
        return SessionKNN(train_sessions, n_items, KNN_DEFAULTS[name])
    raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
