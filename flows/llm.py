"""Prefect flow `llm`: corpus → continual pretraining → pairs → contrastive fine-tuning (teacher)
→ HomoDistil → contrastive fine-tuning (student) → scene / PoI embeddings into Feast.

Training tasks carry the tag `gpu`. On a cluster, give them a GPU work pool and cap how many
run at once with a tag concurrency limit (README, "GPU work pool"); on one machine they run on
the CUDA device when there is one and on the CPU otherwise.
"""
from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from components import steps, tracking
from components.config import DEFAULT_PARAMS, ContrastiveConfig, DistillConfig, EmbedConfig, LLMConfig, Params
from flows.settings import flow_params, mlflow_links, mlflow_run
from flows.tasks import step_task


def _logged(params: Params, run_id: str, prefix: str, metrics: dict) -> dict:
    tracking.log_metrics(params, run_id, {f"{prefix}.{k}": v for k, v in metrics.items()})
    return metrics


@step_task("corpus", retries="io")
def corpus_task(params: Params, run_id: str) -> dict:
    return _logged(params, run_id, "corpus", steps.corpus_step(params))


@step_task("pretrain", retries="train")
def pretrain_task(params: Params, run_id: str) -> dict:
    # A retry resumes from the last checkpoint instead of starting over.
    return steps.pretrain_step(params, run_id=run_id)


@step_task("pairs", retries="io")
def pairs_task(params: Params, run_id: str) -> dict:
    return _logged(params, run_id, "pairs", steps.pairs_step(params))


@step_task("contrastive_teacher", retries="train")  # and contrastive_student
def contrastive_task(params: Params, run_id: str, model: str) -> dict:
    return steps.contrastive_step(params, model, run_id=run_id)


@step_task("distill", retries="train")
def distill_task(params: Params, run_id: str) -> dict:
    return steps.distill_step(params, run_id=run_id)


@step_task("embed", log_prints=False, retries="io")
def embed_task(params: Params, run_id: str) -> dict:
    return _logged(params, run_id, "embed", steps.embed_step(params))


@flow(name="llm", log_prints=True)
def llm(llm: LLMConfig = LLMConfig(), contrastive: ContrastiveConfig = ContrastiveConfig(),
        distill: DistillConfig = DistillConfig(), embed: EmbedConfig = EmbedConfig(),
        params_file: str = DEFAULT_PARAMS, isolate: bool = True) -> dict:
    """Turn the curated data into a pretrained LM, a scene encoder, its distilled student and
    cached scene / PoI embeddings in the feature store.

    Run after `features`; `hkfr` and the LARR models of `ctr` read what it writes.

    Args:
        llm: Corpus, tokenizer, model and continual pretraining (the llm section of the params file).
        contrastive: Pair mining and contrastive fine-tuning of the scene encoder.
        distill: HomoDistil: pruning the pretrained model while distilling it.
        embed: The embed section: which encoder writes the scene / PoI embeddings into Feast.
        params_file: Parameters file, relative to the project folder (e.g. params/small.yaml).
        isolate: Runs with overrides or another params file log to their own MLflow experiment and
            registered models and write to their own folders; untick to write into the params file's.

    In every section, fields you leave as shown keep the params file's values; a changed field is an override.
    """
    params, _ = flow_params(params_file, "llm", isolate, llm=llm, contrastive=contrastive, distill=distill,
                            embed=embed)
    results: dict = {}
    runs: dict = {}

    def stage(name: str, fn, *args):
        with mlflow_run(params, "llm", step=name) as run_id:
            section = steps.STEPS[name].section
            tracking.log_params(params, run_id, {section: getattr(params, section).model_dump(mode="json")})
            results[name] = fn(params, run_id, *args)
            runs[name] = run_id
        return results[name]

    stage("corpus", corpus_task)
    stage("pretrain", pretrain_task)
    stage("pairs", pairs_task)
    stage("contrastive_teacher", contrastive_task, "teacher")
    stage("distill", distill_task)
    stage("contrastive_student", contrastive_task, "student")
    stage("embed", embed_task)
    table = [{"stage": s, "metric": k, "value": v} for s, m in results.items() for k, v in m.items()
             if any(w in k for w in ("loss", "ppl", "recall", "mrr", "params", "tokens_per_s", "texts_per_s"))]
    links = "\n".join(f"{s}: " + mlflow_links(params, r)[2:] for s, r in runs.items())
    create_table_artifact(key="llm-summary", table=table,
                          description="LLM stages: losses, perplexity, retrieval\n\n" + links)
    return results
