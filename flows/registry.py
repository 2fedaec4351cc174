"""Prefect flows `promote`, `rollback` and `audit`: the registry's manual actions from the Prefect
UI, through the same audited functions as `scenerec promote / rollback / audit`
(components/registry.py). Use these, not MLflow's alias editor: an alias moved there leaves no
audit entry, and `audit` flags it.
"""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from components import registry
from flows.settings import flow_params, flow_run_id


def _by(by: str | None) -> str:
    run = flow_run_id()
    return by or (f"prefect:{registry.who()}:{run}" if run else registry.who())


@flow(name="promote", log_prints=True)
def promote(version: str, reason: str, name: str | None = None, by: str | None = None,
            params_file: str | None = None) -> dict:
    """Give a model version the `champion` alias (the previous champion is kept for rollback).

    Args:
        version: the model version to promote (see the `audit` flow or MLflow's versions table).
        reason: why; kept in the version's audit tags.
        name: registered model (default: `ctr.registered_name`).
        by: who (default: the worker's user and this flow run).
        params_file: parameters file (default: params.yaml of the project).
    """
    params, _ = flow_params(params_file)
    name = name or params.ctr.registered_name
    out = registry.promote(params, name, version, reason, by=_by(by))
    line = f"{name}: champion is version {out['champion']} (was {out['previous'] or 'none'}); reason: {reason}"
    create_markdown_artifact(key="registry-promote", markdown=line, description="manual promotion")
    print(line)
    return out


@flow(name="rollback", log_prints=True)
def rollback(reason: str, name: str | None = None, by: str | None = None, params_file: str | None = None) -> dict:
    """Give the `champion` alias back to the version the current champion replaced.

    Args:
        reason: why; kept in the versions' audit tags.
        name: registered model (default: `ctr.registered_name`).
        by: who (default: the worker's user and this flow run).
        params_file: parameters file (default: params.yaml of the project).
    """
    params, _ = flow_params(params_file)
    name = name or params.ctr.registered_name
    try:
        out = registry.rollback(params, name, reason, by=_by(by))
    except registry.RegistryError as e:
        get_run_logger().error(str(e))
        raise
    line = f"{name}: rolled back from version {out['rolled_back']} to version {out['champion']}; reason: {reason}"
    create_markdown_artifact(key="registry-rollback", markdown=line, description="rollback")
    print(line)
    return out


@flow(name="audit", log_prints=True)
def audit(name: str | None = None, params_file: str | None = None) -> dict:
    """The current aliases and the audit trail of a registered model; fails when an alias was moved
    without an audit entry (e.g. in MLflow's alias editor).

    Args:
        name: registered model (default: `ctr.registered_name`).
        params_file: parameters file (default: params.yaml of the project).
    """
    params, _ = flow_params(params_file)
    name = name or params.ctr.registered_name
    out = registry.audit(params, name)
    create_table_artifact(key="registry-audit", table=out["history"] or [{"at": "-", "version": "-", "entry": "none"}],
                          description=f"{name} aliases now: {out['aliases'] or 'none'}")
    for u in out["unaudited"]:
        print(f"UNAUDITED: @{u['alias']} is version {u['now']} but the last audit entry left it at {u['audited']}")
    if out["unaudited"]:
        raise RuntimeError(f"{name}: {len(out['unaudited'])} alias change(s) without an audit entry; "
                           "record them with the `promote` flow")
    return out
