"""How a flow run turns its UI form / call arguments into one validated ``Params``."""
from __future__ import annotations

from pydantic import BaseModel

from components.config import Params, load_params


def flow_params(params_file: str | None, **sections: BaseModel | dict | int | None) -> tuple[Params, bool]:
    """Load params.yaml and lay the sections given to the flow over it.

    Returns the params and whether anything was overridden (an overridden run does not match
    params.yaml, so its outputs must not be recorded in dvc.lock).
    """
    overrides = {}
    for name, value in sections.items():
        if value is None:
            continue
        overrides[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return load_params(params_file, overrides=overrides), bool(overrides)


def flow_run_id() -> str | None:
    """The id of the Prefect flow run this code runs in (None outside one); components take it as a value."""
    from prefect.runtime import flow_run

    return flow_run.id or None


def publish_comparison(key: str, result: dict) -> str:
    """A Prefect table artifact ``key``: the register step's metrics, challenger beside champion on
    the same data, described by the verdict; returns the verdict (one line)."""
    from prefect.artifacts import create_table_artifact

    rows = [{"metric": k, "challenger": v, "champion": (result["champion_metrics"] or {}).get(k, "—"),
             "popularity baseline": (result.get("baseline_metrics") or {}).get(k, "—")}
            for k, v in result["challenger_metrics"].items()]
    verdict = (f"{result['name']} v{result['version']} -> {result['alias']}: "
               f"{result['reason']}")
    create_table_artifact(key=key, table=rows, description=verdict)
    return verdict
