"""Serve the pipeline's deployments from this process (no work pool needed):

    python -m flows.serve            # with PREFECT_API_URL pointing at `prefect server start`

The same deployments as infra/prefect.yaml: a nightly MovieLens-1M retrain, an on-demand
training run and batch recommendation; trigger them from the UI's Run button or with
`prefect deployment run 'training_pipeline/on-demand' --param ...`.
"""

from __future__ import annotations

from prefect import serve

from flows.batch import batch_recommend
from flows.training import training_pipeline

NIGHTLY_MODEL = "gru4rec-ml1m"  # trained by the nightly deployment, served by batch-recommend


def deployments():
    nightly = training_pipeline.to_deployment(
        name="nightly-ml1m",
        cron="0 2 * * *",
        tags=["gru4rec", "nightly"],
        parameters={"config": {"training": {"preset": "gru4rec-xe"}, "registry": {"name": NIGHTLY_MODEL}}},
    )
    on_demand = training_pipeline.to_deployment(name="on-demand", tags=["gru4rec", "manual"])
    batch = batch_recommend.to_deployment(
        name="batch-recommend", tags=["gru4rec", "inference"], parameters={"model_name": NIGHTLY_MODEL}
    )
    return [nightly, on_demand, batch]


if __name__ == "__main__":
    serve(*deployments())
