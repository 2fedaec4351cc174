"""The MLflow Model Registry side of every SceneRec model: one ``register_candidate`` that logs a
pyfunc, registers it and settles its alias, then manual promotion and rollback, all by **aliases**
(never stages) with an audit trail.

- ``champion``: the version that serves (``models:/NAME@champion``).
- ``challenger``: the newest version that did not become champion (not better than the champion by
  the family's margin, or below the promotion floor).
- The promotion floor: no version becomes champion automatically unless its metric beats chance
  (AUC 0.5) and a trivial baseline scored on the same rows by the family's ``promotion_floor_margin``.
- Every alias change writes tags on the model version it touches: ``audit.<UTC time>`` =
  "action=… aliases=champion:V,challenger:W … by=… reason=…" (the aliases after the change), plus
  ``previous_champion`` on a new champion, which is what ``rollback`` follows back. ``audit``
  compares the aliases now with the last audit entry's, so a change made elsewhere (MLflow's own
  alias editor) is flagged.
- Per-version tags are lineage and audit only (architecture, params hash, data version, git commit,
  model fingerprint, Prefect flow run; a flow adds its run's name and UI link and the run's
  warnings); metrics stay on the MLflow run.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from components.atomic import file_digest

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES = (CHAMPION, CHALLENGER)
CHANCE_AUC = 0.5


class RegistryError(Exception):
    """A registry request that cannot succeed as asked; the message says what, where and what to do."""


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
    """An ``MlflowClient`` on the project's tracking store."""
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


# ------------------------------------------------------------------------------------------------
# Lineage tags of a version


def params_hash(params) -> str:
    """A short hash of every parameter (what a run with the same params.yaml reproduces)."""
    text = json.dumps(params.model_dump(mode="json"), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def lineage_tags(params, family: str, architecture: str, flow_run_id: str | None = None) -> dict[str, str]:
    """The tags every registered version carries: the model actually trained, params hash, data
    version, code version and the Prefect flow run (when one started it)."""
    from components import tracking

    tags = {"model_family": family, "architecture": architecture, "params_hash": params_hash(params),
            "data_version": tracking.data_version(params.root)["data_version"],
            "git_commit": tracking.git_commit(params.root)}
    if flow_run_id:
        tags["prefect_flow_run_id"] = str(flow_run_id)
    return tags


# ------------------------------------------------------------------------------------------------
# The promotion rule (pure)


def popularity(train_items, train_labels, items):
    """The floor's trivial scorer: each item's label rate over the training rows, smoothed by one
    pseudo-row at the overall rate (which unseen items get); a float array aligned with ``items``."""
    import numpy as np
    import pandas as pd

    train = pd.DataFrame({"item": pd.Series(train_items, dtype=object).astype(str).to_numpy(),
                          "label": np.asarray(train_labels, dtype=float)})
    prior = float(train["label"].mean()) if len(train) else 0.0
    stats = train.groupby("item")["label"].agg(["sum", "count"])
    rate = (stats["sum"] + prior) / (stats["count"] + 1.0)
    return pd.Series(items, dtype=object).astype(str).map(rate).fillna(prior).to_numpy(dtype=float)


def floor_verdict(value: float, metric: str, floor: dict) -> str | None:
    """None when ``value`` clears the floor (chance and the baseline, plus the floor margin), else why not."""
    bars = {"chance": float(floor.get("chance", CHANCE_AUC))}
    base = floor.get("baseline")
    if base is not None and base == base:
        bars[f"{floor.get('baseline_name', 'baseline')} baseline"] = float(base)
    need = max(bars.values()) + float(floor.get("margin", 0.0))
    if value > need:
        return None
    shown = ", ".join(f"{k} {v:.4f}" for k, v in bars.items())
    return (f"below the promotion floor: {metric} {value:.4f} <= {need:.4f} "
            f"(best of {shown}, plus floor margin {floor.get('margin', 0.0)})")


def decide(challenger: dict, champion: dict | None, metric: str, margin: float, floor: dict | None = None) -> dict:
    """Pure promotion rule: the challenger becomes champion when it clears the ``floor`` (if given)
    and there is no champion, or its ``metric`` beats the champion's on the same data by more than ``margin``."""
    new = challenger.get(metric)
    if new is None or new != new:  # NaN
        return {"promote": False, "reason": f"challenger has no {metric}", "metric": metric}
    if floor is not None:
        below = floor_verdict(new, metric, floor)
        if below:
            return {"promote": False, "reason": below, "metric": metric, "challenger": new, "floor": floor}
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


# ------------------------------------------------------------------------------------------------
# Registering a candidate


@dataclass
class Candidate:
    """What a model family hands to ``register_candidate``: its pyfunc, how to score it, its rule."""

    name: str                                          # registered model name
    artifact_name: str                                 # the pyfunc's folder in the MLflow run
    python_model: type                                 # the mlflow.pyfunc.PythonModel subclass
    prepare: Callable[[Path], tuple[dict, Any]]        # (temp dir) -> (artifacts, input example)
    score: Callable[[dict], dict]                      # {"challenger"[, "champion"]: pyfunc} -> metrics of each, same rows
    metric: str                                        # the metric key the rule compares
    margin: float                                      # better than the champion by more than this
    floor_margin: float                                # better than chance and the baseline by more than this
    baseline: Callable[[], dict] | None = None         # metrics of a trivial scorer on the same rows
    baseline_name: str = "popularity"
    chance: float = CHANCE_AUC                         # the metric of a random scorer (AUC 0.5; a retrieval metric's random level)
    tags: dict = field(default_factory=dict)           # lineage_tags(...)
    pip_requirements: list[str] | None = None
    signature: Callable[[Any], Any] | None = None      # (output example) -> MLflow signature; None: inferred


FINGERPRINT_TAG = "scenerec.fingerprint"


def artifact_fingerprint(artifacts: dict, data_version: str | None = None) -> str:
    """SHA-256 over every file of the pyfunc's artifacts (relative path and bytes, in a fixed order)
    and the data version: equal fingerprints mean the same model trained on the same data."""
    h = hashlib.sha256(f"data:{data_version}".encode())
    for key in sorted(artifacts):
        root = Path(artifacts[key])
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            h.update(f"{key}/{f.relative_to(root) if f != root else f.name}:{file_digest(f)}".encode())
    return h.hexdigest()[:16]


def unchanged_version(c, name: str, fingerprint: str) -> str | None:
    """The newest version of ``name`` registered with ``fingerprint``, or None."""
    same = [int(v.version) for v in c.search_model_versions(f"name='{name}'") if (v.tags or {}).get(FINGERPRINT_TAG) == fingerprint]
    return str(max(same)) if same else None


def _reused(c, name: str, version: str, candidate, challenger) -> dict:
    """What ``register_candidate`` reports when the candidate equals ``version``: no new version, no alias moved."""
    champion = alias_version(c, name, CHAMPION)
    alias = CHAMPION if champion == version else CHALLENGER if alias_version(c, name, CHALLENGER) == version else "none"
    metrics = candidate.score({"challenger": challenger})["challenger"]
    baseline = candidate.baseline() if candidate.baseline else None
    return {"name": name, "version": version, "previous_champion": champion, "champion": champion, "promoted": False,
            "alias": alias, "reason": f"unchanged: v{version} has the same model files and data version; no new version",
            "metric": candidate.metric, "margin": candidate.margin, "reused": True, "challenger_metrics": metrics,
            "champion_metrics": None, "baseline_metrics": baseline, "floor": None, "tags": dict(candidate.tags)}


def _context(artifacts: dict):
    from mlflow.pyfunc import PythonModelContext

    return PythonModelContext(artifacts, {})


def _registry_locked(fn):
    """Run ``fn(params, ...)`` under the registry lock (re-entrant: a caller may already hold it), so
    every path that moves an alias or writes the audit trail is serialised, whoever calls it."""
    import functools

    @functools.wraps(fn)
    def locked(params, *args, **kwargs):
        from components.locks import hold

        with hold(params, "registry", fn.__name__.replace("_", " ")):
            return fn(params, *args, **kwargs)

    return locked


@_registry_locked
def register_candidate(params, run_id: str, candidate: Candidate, by: str | None = None) -> dict:
    """Log ``candidate`` as a pyfunc of run ``run_id`` and register it; score it and the champion on
    the same rows; it takes ``champion`` when it clears the floor and beats the champion by the
    margin, else ``challenger``; audited. A candidate equal to an existing version (same model files
    and data version, ``reliability.reuse_unchanged_models``) reuses it. Temporary files are removed whatever happens."""
    import mlflow

    name = candidate.name
    tmp = Path(tempfile.mkdtemp(prefix="scenerec-register-"))
    try:
        artifacts, example = candidate.prepare(tmp)
        challenger = candidate.python_model()
        challenger.load_context(_context(artifacts))
        fingerprint = artifact_fingerprint(artifacts, candidate.tags.get("data_version"))
        reuse = getattr(getattr(params, "reliability", None), "reuse_unchanged_models", True)
        same = unchanged_version(client(params), name, fingerprint) if reuse else None
        if same is not None:
            return _reused(client(params), name, same, candidate, challenger)
        output = challenger.predict(None, example)
        mv = log_pyfunc(params, run_id, candidate.artifact_name, candidate.python_model(), artifacts, example,
                        output, name, candidate.pip_requirements,
                        candidate.signature(output) if candidate.signature else None)
        version = str(mv.version)
        c = client(params)
        for k, v in {**candidate.tags, FINGERPRINT_TAG: fingerprint}.items():
            if v is not None:
                c.set_model_version_tag(name, version, k, str(v))
        champion = alias_version(c, name, CHAMPION)
        models = {"challenger": challenger}
        if champion is not None and champion != version:
            dst = tmp / "champion"
            dst.mkdir()
            models["champion"] = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}",
                                                          dst_path=str(dst)).unwrap_python_model()
        scored = candidate.score(models)
        baseline = candidate.baseline() if candidate.baseline else None
        floor = {"chance": candidate.chance, "baseline": (baseline or {}).get(candidate.metric),
                 "baseline_name": candidate.baseline_name, "margin": candidate.floor_margin}
        result = settle(c, name, version, champion, scored["challenger"], scored.get("champion"), candidate.metric,
                        candidate.margin, by, floor)
        return {**result, "baseline_metrics": baseline, "floor": floor, "tags": dict(candidate.tags)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Aliases and their audit trail


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


def _require_model(c, name: str):
    """The registered model ``name``, or a RegistryError naming the models there are."""
    try:
        return c.get_registered_model(name)
    except Exception:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST
        known = sorted(m.name for m in c.search_registered_models())
        raise RegistryError(f"no registered model {name!r} in this MLflow store (registered: "
                            f"{', '.join(known) or 'none'}); pass --name") from None


def current_aliases(c, name: str) -> dict[str, str]:
    """Every alias of ``name`` and the version it points at."""
    return {a: str(v) for a, v in (_require_model(c, name).aliases or {}).items()}


def _state(c, name: str) -> str:
    now = current_aliases(c, name)
    return ",".join(f"{a}:{now.get(a, '-')}" for a in ALIASES)


def _audit(c, name: str, version: str, action: str, by: str, reason: str, **extra) -> None:
    """One audit entry on ``version``: the action, the aliases after it, extras, who and why (last,
    since it is free text)."""
    now = datetime.now(timezone.utc)
    fields = {"action": action, "aliases": _state(c, name), **{k: v for k, v in extra.items() if v is not None},
              "by": by, "reason": reason}
    key = f"audit.{now.strftime('%Y%m%dT%H%M%S.%fZ')}"
    if key in c.get_model_version(name, version).tags:  # two entries in one microsecond on one version
        key += "b"
    c.set_model_version_tag(name, version, key, " ".join(f"{k}={v}" for k, v in fields.items()))
    c.set_model_version_tag(name, version, "last_action", action)
    c.set_model_version_tag(name, version, "last_action_by", by)
    c.set_model_version_tag(name, version, "last_action_at", now.isoformat(timespec="seconds"))
    c.set_model_version_tag(name, version, "last_action_reason", reason)


def settle(c, name: str, version: str, previous_champion: str | None, challenger_m: dict, champion_m: dict | None,
           metric: str, margin: float, by: str | None = None, floor: dict | None = None) -> dict:
    """Apply ``decide`` to a freshly registered ``version``: ``champion`` when it wins, else
    ``challenger``, with the audit tags; returns what the register steps report."""
    decision = decide(challenger_m, champion_m, metric, margin, floor)
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
    if previous == version:  # nothing moves, but the act (e.g. acknowledging an outside change) is recorded
        _audit(c, name, version, action, by, reason, note="already_champion")
        return {"name": name, "champion": version, "previous": previous, "changed": False}
    c.set_registered_model_alias(name, CHAMPION, version)
    if previous is not None and action == "promote":
        c.set_model_version_tag(name, version, "previous_champion", previous)
    if alias_version(c, name, CHALLENGER) == version:
        c.delete_registered_model_alias(name, CHALLENGER)
    _audit(c, name, version, action, by, reason, previous_champion=previous)
    if previous is not None:
        _audit(c, name, previous, f"replaced_by_{action}", by, reason, new_champion=version)
    return {"name": name, "champion": version, "previous": previous, "changed": True}


def set_challenger(c, name: str, version: str, by: str, reason: str) -> dict:
    """Give ``version`` the challenger alias, audited."""
    c.set_registered_model_alias(name, CHALLENGER, str(version))
    _audit(c, name, str(version), "challenger", by, reason, champion=alias_version(c, name, CHAMPION))
    return {"name": name, "challenger": str(version), "champion": alias_version(c, name, CHAMPION)}


@_registry_locked
def promote(params, name: str, version: str | int, reason: str, by: str | None = None) -> dict:
    """Manual promotion: ``version`` becomes champion (the old one is kept for rollback)."""
    c = client(params)
    _require_model(c, name)
    try:
        c.get_model_version(name, str(version))
    except Exception:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST
        have = sorted((int(m.version) for m in c.search_model_versions(f"name='{name}'")))
        raise RegistryError(f"{name} has no version {version} (versions: {', '.join(map(str, have)) or 'none'}); "
                            f"see `scenerec audit --name {name}`") from None
    return set_champion(c, name, str(version), by or who(), reason)


@_registry_locked
def rollback(params, name: str, reason: str, by: str | None = None) -> dict:
    """Give the champion alias back to the version the current champion replaced."""
    c = client(params)
    _require_model(c, name)
    current = alias_version(c, name, CHAMPION)
    if current is None:
        raise RegistryError(f"nothing to roll back: {name} has no {CHAMPION} alias")
    previous = c.get_model_version(name, current).tags.get("previous_champion")
    if not previous:
        raise RegistryError(f"nothing to roll back to: {name} version {current} is the first champion "
                            "(no earlier champion recorded)")
    out = set_champion(c, name, previous, by or who(), reason, action="rollback")
    c.set_registered_model_alias(name, CHALLENGER, current)
    _audit(c, name, current, "challenger", by or who(), reason, rolled_back=True)
    return {**out, "rolled_back": current}


def history(params, name: str) -> list[dict]:
    """Every audit entry of every version of ``name``, oldest first."""
    c = client(params)
    _require_model(c, name)
    rows = []
    for mv in c.search_model_versions(f"name='{name}'"):
        for k, v in mv.tags.items():
            if k.startswith("audit."):
                rows.append({"at": k[len("audit."):], "version": str(mv.version), "entry": v})
    return sorted(rows, key=lambda r: r["at"])


_ALIASES_FIELD = re.compile(r"^action=\S+ aliases=(\S+)")


def audited_aliases(rows: list[dict]) -> dict[str, str] | None:
    """The aliases as the last audit entry left them (None when no entry records them)."""
    for row in reversed(rows):
        m = _ALIASES_FIELD.match(row["entry"])
        if m:
            pairs = (p.split(":", 1) for p in m.group(1).split(","))
            return {a: v for a, v in pairs if v != "-"}
    return None


def audit(params, name: str) -> dict:
    """The aliases now, the audit trail, and every alias whose target differs from what the last
    audit entry recorded (a change made outside scenerec, e.g. in MLflow's alias editor)."""
    c = client(params)
    now = current_aliases(c, name)
    rows = history(params, name)
    audited = audited_aliases(rows) or {}
    unaudited = []
    for alias in ALIASES:
        if now.get(alias) != audited.get(alias):
            unaudited.append({"alias": alias, "now": now.get(alias), "audited": audited.get(alias)})
    return {"name": name, "aliases": now, "history": rows, "audited_aliases": audited, "unaudited": unaudited}
