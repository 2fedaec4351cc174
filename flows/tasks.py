"""Prefect tasks of registered steps: their names and tags come from the step registry
(``components.steps.STEPS``), their retries from the run's ``reliability`` section, the flow adds
its own Prefect settings (log_prints)."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from components.config import ReliabilityConfig
from components.steps import STEPS
from flows.settings import retry_options


class StepTask:
    """A step's Prefect task whose retries are read from the params it is called with (its first
    argument) each call; every other attribute is the task's (``.retries`` shows the defaults)."""

    def __init__(self, task_, kind: str):
        self.task, self.kind = task_, kind

    def __call__(self, params, *args, **kwargs):
        return self.task.with_options(**retry_options(params.reliability, self.kind))(params, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.task, name)


def params_retries(kind: str):
    """Decorator over a ``@task``: its retries come from the run's params per call, as a step's do."""
    return lambda t: StepTask(t, kind)


def step_task(name: str, retries: str | None = None, **options):
    """The ``@task`` decorator for step ``name``: ``Step.task`` as the task name, ``Step.tags`` as
    its tags (`gpu` ones go to a GPU work pool), no result caching; ``retries`` "io" or "train"
    (``reliability.io_retries`` / ``train_retries``, transient failures only)."""
    step = STEPS[name]
    defaults = retry_options(ReliabilityConfig(), retries) if retries else {}

    def decorate(fn):
        t = task(name=step.task, tags=list(step.tags), cache_policy=NO_CACHE, **defaults, **options)(fn)
        return StepTask(t, retries) if retries else t

    return decorate
