"""Prefect tasks of registered steps: their names and tags come from the step registry
(``components.steps.STEPS``), the flow adds its own Prefect settings (retries, log_prints)."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from components.steps import STEPS


def step_task(name: str, **options):
    """The ``@task`` decorator for step ``name``: ``Step.task`` as the task name, ``Step.tags`` as
    its tags (`gpu` ones go to a GPU work pool), no result caching."""
    step = STEPS[name]
    return task(name=step.task, tags=list(step.tags), cache_policy=NO_CACHE, **options)
