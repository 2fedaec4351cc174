"""The MLflow Model Registry side of every SceneRec model: log a pyfunc into a given run and register
it, then promotion by **aliases** (never stages) with an audit trail.

- ``champion``: the version that serves (``models:/NAME@champion``).
- ``challenger``: the newest version that did not beat the champion by the margin.
- Every alias change writes tags on the model version it touches — ``audit.<UTC time>`` =
  "action=… by=… reason=… from=… to=…" — plus ``previous_champion`` on a new champion, which is what
  ``rollback`` follows back.
"""
from __future__ import annotations

import getpass
import os
from contextlib import nullcontext
from datetime import datetime, timezone

CHAMPION = "champion"
CHALLENGER = "challenger"


def requirements(packages=("torch", "numpy", "pandas", "scikit-learn", "mlflow")) -> list[str]:
    """Pinned pip requirements of a pyfunc (explicit, so MLflow does not load the model to infer them)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in packages:
        try:
            reqs.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def client(params):
    import mlflow

    from components import tracking

    tracking.configure(params)
    return mlflow.MlflowClient(tracking.tracking_uri(params))


def log_pyfunc(params, run_id: str, artifact_name: str, python_model, artifacts: dict, input_example,
               output_example, registered_name: str, pip_requirements: list[str] | None = None,
               signature=None):
    """Log ``python_model`` as a pyfunc of run ``run_id`` (signature from the examples) and register
    it as ``registered_name`` (``signature`` overrides the inferred one); returns the new ``ModelVersion``."""
    import mlflow
    from mlflow.models import infer_signature

    c = client(params)
    status = c.get_run(run_id).info.status
    # The fluent API's active run is thread-local: open this run here, in this thread, for log_model only.
    active = mlflow.active_run()
    ours = not (active and active.info.run_id == run_id)
    with mlflow.start_run(run_id=run_id, nested=active is not None) if ours else nullcontext():
        info = mlflow.pyfunc.log_model(
            name=artifact_name, python_model=python_model, artifacts=artifacts,
            signature=signature or infer_signature(input_example, output_example), input_example=input_example,
            pip_requirements=pip_requirements or requirements(), registered_model_name=registered_name,
        )
    if ours and status == "RUNNING":  # leaving the `with` ended the run; the caller still owns it
        c.update_run(run_id, status="RUNNING")
    return c.get_model_version(registered_name, str(info.registered_model_version))


def who() -> str:
    """Who is acting: $SCENEREC_USER, else the login name."""
    try:
        return os.environ.get("SCENEREC_USER") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"


def alias_version(c, name: str, alias: str) -> str | None:
    """The version holding ``alias``, or None."""
    try:
        return str(c.get_model_version_by_alias(name, alias).version)
    except Exception:  # noqa: BLE001 - MlflowException when the alias (or the model) does not exist
        return None


def _audit(c, name: str, version: str, action: str, by: str, reason: str, **extra) -> None:
    now = datetime.now(timezone.utc)
    fields = {"action": action, "by": by, "reason": reason, **{k: v for k, v in extra.items() if v is not None}}
    c.set_model_version_tag(name, version, f"audit.{now.strftime('%Y%m%dT%H%M%S.%fZ')}",
                            " ".join(f"{k}={v}" for k, v in fields.items()))
    c.set_model_version_tag(name, version, "last_action", action)
    c.set_model_version_tag(name, version, "last_action_by", by)
    c.set_model_version_tag(name, version, "last_action_at", now.isoformat(timespec="seconds"))
    c.set_model_version_tag(name, version, "last_action_reason", reason)


def decide(challenger: dict, champion: dict | None, metric: str, margin: float) -> dict:
    """Pure promotion rule: the challenger becomes champion when there is none, or when its
    ``metric`` beats the champion's on the same data by more than ``margin``."""
    new = challenger.get(metric)
    if new is None or new != new:  # NaN
        return {"promote": False, "reason": f"challenger has no {metric}", "metric": metric}
    if champion is None:
        return {"promote": True, "reason": "no champion yet", "metric": metric, "challenger": new}
    old = champion.get(metric)
    if old is None or old != old:
        return {"promote": True, "reason": f"champion has no {metric} on this data", "metric": metric,
                "challenger": new}
    delta = new - old
    ok = delta > margin
    why = (f"{metric} {new:.4f} vs champion {old:.4f}: {delta:+.4f} " + ("> " if ok else "<= ") + f"margin {margin}")
    return {"promote": ok, "reason": why, "metric": metric, "challenger": new, "champion": old,
            "delta": delta, "margin": margin}


def settle(c, name: str, version: str, previous_champion: str | None, challenger_m: dict, champion_m: dict | None,
           metric: str, margin: float, by: str | None = None) -> dict:
    """Apply ``decide`` to a freshly registered ``version``: ``champion`` when it wins, else
    ``challenger``, with the audit tags; returns what the register steps report."""
    decision = decide(challenger_m, champion_m, metric, margin)
    by = by or f"pipeline:{who()}"
    if decision["promote"]:
        set_champion(c, name, version, by, decision["reason"])
    else:
        set_challenger(c, name, version, by, decision["reason"])
    return {"name": name, "version": str(version), "previous_champion": previous_champion,
            "champion": alias_version(c, name, CHAMPION), "promoted": decision["promote"],
            "alias": CHAMPION if decision["promote"] else CHALLENGER, "reason": decision["reason"], "metric": metric,
            "margin": margin,
            "challenger_metrics": challenger_m, "champion_metrics": champion_m}


def set_champion(c, name: str, version: str, by: str, reason: str, action: str = "promote") -> dict:
    """Give ``version`` the champion alias, remembering the previous champion on it."""
    version = str(version)
    previous = alias_version(c, name, CHAMPION)
    if previous == version:
        return {"name": name, "champion": version, "previous": previous, "changed": False}
    c.set_registered_model_alias(name, CHAMPION, version)
    if previous is not None and action == "promote":
        c.set_model_version_tag(name, version, "previous_champion", previous)
    _audit(c, name, version, action, by, reason, previous_champion=previous)
    if previous is not None:
        _audit(c, name, previous, f"replaced_by_{action}", by, reason, new_champion=version)
    if alias_version(c, name, CHALLENGER) == version:
        c.delete_registered_model_alias(name, CHALLENGER)
    return {"name": name, "champion": version, "previous": previous, "changed": True}


def set_challenger(c, name: str, version: str, by: str, reason: str) -> dict:
    c.set_registered_model_alias(name, CHALLENGER, str(version))
    _audit(c, name, str(version), "challenger", by, reason, champion=alias_version(c, name, CHAMPION))
    return {"name": name, "challenger": str(version), "champion": alias_version(c, name, CHAMPION)}


def promote(params, name: str, version: str | int, reason: str, by: str | None = None) -> dict:
    """Manual promotion: ``version`` becomes champion (the old one is kept for rollback)."""
    c = client(params)
    c.get_model_version(name, str(version))  # a clear MLflow error when it does not exist
    return set_champion(c, name, str(version), by or who(), reason)


def rollback(params, name: str, reason: str, by: str | None = None) -> dict:
    """Give the champion alias back to the version the current champion replaced."""
    c = client(params)
    current = alias_version(c, name, CHAMPION)
    if current is None:
        raise ValueError(f"model {name!r} has no {CHAMPION} alias: nothing to roll back")
    previous = c.get_model_version(name, current).tags.get("previous_champion")
    if not previous:
        raise ValueError(f"{name} version {current} is the first champion: there is no previous version to restore")
    out = set_champion(c, name, previous, by or who(), reason, action="rollback")
    c.set_registered_model_alias(name, CHALLENGER, current)
    return {**out, "rolled_back": current}


def history(params, name: str) -> list[dict]:
    """Every audit entry of every version of ``name``, oldest first."""
    c = client(params)
    rows = []
    for mv in c.search_model_versions(f"name='{name}'"):
        for k, v in mv.tags.items():
            if k.startswith("audit."):
                rows.append({"at": k[len("audit."):], "version": str(mv.version), "entry": v})
    return sorted(rows, key=lambda r: r["at"])
