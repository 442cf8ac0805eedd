"""The deployment definitions point at real flows with parameters those flows accept."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from flows.config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]


def test_prefect_yaml_deployments_are_valid():
    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert {"nightly-ml1m", "on-demand", "batch-recommend"} <= names
    for dep in spec["deployments"]:
        module_path, func = dep["entrypoint"].split(":")
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        params = dep.get("parameters", {})
        assert set(params) <= set(flow.parameters.properties), dep["name"]
        if "config" in params:
            PipelineConfig.model_validate(params["config"])  # raises on a bad setting
        assert dep["work_pool"]["name"] == "gru4rec-process"
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly-ml1m")
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"


def test_served_deployments_build():
    from flows.serve import deployments

    deps = deployments()
    assert [d.name for d in deps] == ["nightly-ml1m", "on-demand", "batch-recommend"]
    assert deps[0].schedules and deps[0].schedules[0].schedule.cron == "0 2 * * *"


def test_serving_deployments_read_a_model_that_a_deployment_trains():
    from flows.serve import deployments

    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    trained = {PipelineConfig.model_validate(d["parameters"]["config"]).registry.name
               for d in spec["deployments"] if "config" in d.get("parameters", {})}
    served = [d["parameters"]["model_name"] for d in spec["deployments"] if "model_name" in d.get("parameters", {})]
    assert served and set(served) <= trained
    by_name = {d.name: d for d in deployments()}
    assert by_name["batch-recommend"].parameters["model_name"] == (
        by_name["nightly-ml1m"].parameters["config"]["registry"]["name"]
    )
