"""MLflow "model from code" for a GRU4Rec model directory (no pickled Python objects).

MLflow stores this file with the model and runs it on load (`set_model` registers the class), so
the package never imports it. The `gru4rec` modules imported here, and what they import in turn,
are the code the logged model ships (`tasks.registry.library_import_closure` reads these imports).
Input: a DataFrame with a column ``items`` (each row one session: a list of item ids, oldest
first). Output: a DataFrame with ``items`` (top-k item ids), ``scores``, ``unknown_items`` and
``fallback`` (True when the session had no known item and popular items were returned).
Parameter ``k`` (default 20) and ``exclude_seen`` can be passed as params; without ``exclude_seen``
the model's own setting applies (recorded in its config.json when it was trained, see
`gru4rec.seen`; a model directory from before keeps the session's items).
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class GRU4RecPyfunc(PythonModel):
    def load_context(self, context):
        from gru4rec.persist import load_model
        from gru4rec.recommender import Recommender

        self.recommender = Recommender(load_model(context.artifacts["model_dir"]))

    # The DataFrame hint is one MLflow accepts without inferring a schema from it (the model is
    # logged with an explicit signature); without any hint MLflow warns on every load.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        k = int(params.get("k", 20))
        exclude_seen = params.get("exclude_seen")  # None: the model's own setting
        exclude_seen = None if exclude_seen is None else bool(exclude_seen)
        if isinstance(model_input, pd.DataFrame):
            sessions = [list(s) if s is not None else [] for s in model_input["items"]]
        else:  # a list of sessions
            sessions = [list(s) for s in model_input]
        recs = self.recommender.recommend(sessions, k=k, exclude_seen=exclude_seen)
        return pd.DataFrame(
            {
                "items": [list(r.items) for r in recs],
                "scores": [[float(x) for x in r.scores] for r in recs],
                "unknown_items": [list(r.unknown_items) for r in recs],
                "fallback": [bool(r.fallback) for r in recs],
            }
        )


mlflow.models.set_model(GRU4RecPyfunc())
