"""Fault injection: kill `run` and `train` with SIGKILL at many points, rerun, and check the result.

    python benchmarks/fault_injection.py                  # named kill points + 8 random kills of each command
    python benchmarks/fault_injection.py --random 20 --out benchmarks/results/fault_injection.json

Kill points are of two kinds. *Named* ones (`gru4rec/faults.py`, env GRU4REC_KILL_AT) stop the
process exactly inside a checkpoint write, a model-directory write or a registration. *Random* ones
send SIGKILL after a random delay within the uninterrupted command's duration. After every kill
the same command is run again, and the script checks:

- the rerun succeeds and its weights are byte-identical to an uninterrupted run's;
- `run`: the registry holds one version, tagged (its `alias` tag written), the champion alias on
  it, no MLflow run left RUNNING, the killed Prefect flow run not left RUNNING;
- no temporary Prefect server or other process of the killed command is still alive;
- no temporary file (`*.tmp`, `.*.tmp-*`) is left in the work directory.

Synthetic data (a MovieLens-style log from tests/synthetic.py), a tiny model: each trial takes
about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CLI = [sys.executable, "-c", "from flows.cli import main; main()"]
MODEL = ["--layers", "16", "--batch-size", "8", "--epochs", "6", "--threads", "1", "--set", "train.n_sample=16"]
NAMED = {
    "run": [
        "checkpoint-write:1", "checkpoint-write:4", "model-dir-write",
        "registry-version-created", "registry-tagged", "registry-alias-set",
    ],
    "train": ["checkpoint-write:1", "checkpoint-write:4", "model-dir-write"],
}


def _env(base: Path, kill_at: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GRU4REC_KILL_AT"))}
    env |= {"PREFECT_HOME": str(base / "prefect-home"), "PYTHONPATH": str(REPO), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return env | ({"GRU4REC_KILL_AT": kill_at} if kill_at else {})


def _command(kind: str, base: Path, source: Path, split: Path) -> list[str]:
    if kind == "run":
        return [*CLI, "run", "--source", str(source), "--workdir", str(base / "work"), "--registry-name", "faults", *MODEL]
    return [*CLI, "train", "--split", str(split), "--out", str(base / "model"), "--no-progress", *MODEL]


def _weights(kind: str, base: Path) -> bytes:
    if kind == "train":
        return (base / "model" / "model.safetensors").read_bytes()
    (summary,) = (base / "work" / "runs").glob("*/summary.json")
    return (Path(json.loads(summary.read_text())["model_dir"]) / "model.safetensors").read_bytes()


def _leftover_temp_files(base: Path) -> list[str]:
    root = base / ("work" if (base / "work").exists() else "")
    return sorted(
        str(p.relative_to(base))
        for p in root.rglob("*")
        if (p.name.endswith(".tmp") or ".tmp-" in p.name) and "prefect-home" not in p.parts
    )


def _processes_of(base: Path) -> list[int]:
    """Live processes whose environment names this trial's PREFECT_HOME (the CLI, its server)."""
    marker = f"PREFECT_HOME={base / 'prefect-home'}".encode()
    found = []
    for env_file in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in env_file.read_bytes().split(b"\0"):
                found.append(int(env_file.parent.name))
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


def _registry_problems(base: Path) -> list[str]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{base / 'work' / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    problems = []
    versions = client.search_model_versions("name='faults'")
    if len(versions) != 1:
        problems.append(f"{len(versions)} versions (expected 1)")
    problems += [f"v{v.version} has no alias tag" for v in versions if "alias" not in v.tags]
    champion = client.get_model_version_by_alias("faults", "champion")
    if versions and str(champion.version) != str(min(int(v.version) for v in versions)):
        problems.append(f"champion on v{champion.version}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    problems += [f"MLflow run {r.info.run_id} still RUNNING" for r in runs if r.info.status == "RUNNING"]
    return problems


def _flow_runs_left_running(base: Path, log: str) -> list[str]:
    """The killed flow run must have been marked Crashed by the rerun (it says so in its log)."""
    state = next((base / "work" / "runs").glob("*/state.json"), None)
    if state is None:
        return []
    if "resuming the interrupted run" in log and "marked Crashed" not in log:
        return ["the killed flow run was not marked Crashed"]
    return []


def trial(kind: str, base: Path, source: Path, split: Path, reference: bytes, *, kill_at=None, delay=None) -> dict:
    base.mkdir(parents=True)
    cmd, t0 = _command(kind, base, source, split), time.time()
    first = subprocess.Popen(cmd, env=_env(base, kill_at), cwd=base, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    if delay is not None:
        try:
            first.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            first.send_signal(signal.SIGKILL)
    first.wait()
    killed = first.returncode == -signal.SIGKILL
    deadline = time.time() + 20  # the watchdog stops a killed CLI's server within a few seconds
    while (orphans := _processes_of(base)) and time.time() < deadline:
        time.sleep(0.5)
    temp_after_kill = _leftover_temp_files(base)
    rerun = subprocess.run(cmd, env=_env(base), cwd=base, capture_output=True, text=True, timeout=1200)
    log = rerun.stdout + rerun.stderr
    problems = [f"orphaned process {p}" for p in orphans]
    if rerun.returncode != 0:
        problems.append(f"rerun failed (rc {rerun.returncode}): {log[-500:]}")
    else:
        if _weights(kind, base) != reference:
            problems.append("weights differ from the uninterrupted run")
        if kind == "run":
            problems += _registry_problems(base) + _flow_runs_left_running(base, log)
    problems += [f"temp file left: {f}" for f in _leftover_temp_files(base)]
    return {
        "command": kind, "kill_at": kill_at, "delay_s": delay, "killed": killed, "seconds": round(time.time() - t0, 1),
        "temp_files_right_after_kill": temp_after_kill, "problems": problems,
    }


def _reference(kind: str, base: Path, source: Path, split: Path) -> tuple[bytes, float]:
    base.mkdir(parents=True)
    t0 = time.time()
    proc = subprocess.run(_command(kind, base, source, split), env=_env(base), cwd=base, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"reference {kind} failed: {(proc.stdout + proc.stderr)[-2000:]}")
    return _weights(kind, base), time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--random", type=int, default=8, help="random-time kills per command")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gru4rec-faults"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from tests.synthetic import synthetic_movielens

    if args.workdir.exists():
        raise SystemExit(f"{args.workdir} exists: pass a new --workdir")
    rng = random.Random(args.seed)
    source = synthetic_movielens(args.workdir / "source" / "u.data", n_users=400)
    split = args.workdir / "split"
    subprocess.run([*CLI, "prepare", "--source", str(source), "--out", str(split)], env=_env(args.workdir / "prep"),
                   check=True, capture_output=True)
    results = []
    for kind in ("train", "run"):
        reference, duration = _reference(kind, args.workdir / f"reference-{kind}", source, split)
        plan = [dict(kill_at=p) for p in NAMED[kind]] + [dict(delay=round(rng.uniform(1, duration), 2)) for _ in range(args.random)]
        for i, kill in enumerate(plan):
            r = trial(kind, args.workdir / f"{kind}-{i:02d}", source, split, reference, **kill)
            results.append(r)
            print(f"{kind:5s} {str(r['kill_at'] or r['delay_s']):28s} killed={r['killed']!s:5s} "
                  f"{'ok' if not r['problems'] else 'PROBLEMS: ' + '; '.join(r['problems'])}", flush=True)
    report = {"trials": len(results), "killed": sum(r["killed"] for r in results),
              "with_problems": sum(bool(r["problems"]) for r in results), "results": results}
    print(f"{report['trials']} kill points tried ({report['killed']} killed the command), "
          f"{report['with_problems']} with problems")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
