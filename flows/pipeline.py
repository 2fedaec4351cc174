"""Prefect flow `pipeline`: the whole platform end to end.

generate (unless a batch is given) → ingest → features → llm (pretraining, contrastive, HomoDistil,
embeddings) → hkfr (knowledge texts, instruction tuning, user knowledge
embedding into Feast) → ctr (training, evaluation beside the oracle, registration, promotion) → news
(PerCoNet on a MIND-format folder, synthetic by default).
Runs with or without a Prefect server.
"""
from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components import tracking
from components.config import (DEFAULT_PARAMS, SEED, ContrastiveConfig, CTRConfig, DistillConfig, EmbedConfig,
                               FeaturesConfig, GenerateConfig, HKFRConfig, IngestConfig, LLMConfig, NewsConfig, Params,
                               is_profile)
from components.steps import STEPS
from components.versioning import record_run
from flows.ctr import ctr as ctr_flow
from flows.features import features as features_flow
from flows.hkfr import hkfr as hkfr_flow
from flows.ingest import generate as generate_flow
from flows.ingest import ingest as ingest_flow
from flows.llm import llm as llm_flow
from flows.news import news as news_flow
from flows.settings import IO_RETRIES, flow_params, mlflow_links, mlflow_run, pipeline_context
from flows.tasks import params_retries

DVC_STAGES = list(STEPS)  # every step is a stage of dvc.yaml (tests/unit/test_steps.py checks it)


@params_retries("io")
@task(name="record-in-dvc", cache_policy=NO_CACHE, **IO_RETRIES)
def record_task(params: Params, custom_batch: bool) -> str:
    return record_run(params, DVC_STAGES, custom_batch)


def ctr_lines(ctr: dict | None) -> list[str]:
    """The CTR part of the closing message: model vs oracle, and who holds `champion`."""
    if not ctr:
        return []
    s, r = ctr["summary"], ctr["registry"]
    return [f"  CTR model:  {s['model']}: {s['headline']}",
            f"  registry:   {r['name']} v{r['version']} -> {r['alias']} ({r['reason']}); "
            f"champion = {'v' + str(r['champion']) if r['champion'] else 'none yet'}",
            "              promote / roll back: scenerec promote --version N --reason ...; scenerec rollback --reason ..."]


def hkfr_lines(hk: dict | None) -> list[str]:
    """The HKFR part of the closing message."""
    if not hk:
        return []
    m, r = hk["metrics"], hk["registry"]
    return [f"  HKFR:       P(yes) test AUC {m.get('test.auc', float('nan')):.4f} (cold-start users "
            f"{m.get('test.cold_user.auc', float('nan')):.4f}); {r['name']} v{r['version']} -> "
            f"{r['alias']}; user knowledge embedding in Feast"]


def news_lines(news: dict | None) -> list[str]:
    """The news part of the closing message."""
    if not news:
        return []
    m, r = news["metrics"], news["registry"]
    return [f"  news:       PerCoNet dev AUC {m.get('dev.auc', float('nan')):.4f}, MRR {m.get('dev.mrr', float('nan')):.4f}, "
            f"nDCG@10 {m.get('dev.ndcg_at_10', float('nan')):.4f}; {r['name']} v{r['version']} -> "
            f"{r['alias']}"]


def where_to_look(params: Params, metrics: dict) -> str:
    """The closing message of a pipeline run: where its results can be seen."""
    uri = tracking.tracking_uri(params)
    lines = [
        "SceneRec pipeline finished.",
        f"  data:       curated {params.path('curated_dir')}, features {params.path('features_dir')}",
        f"  metrics:    {params.path('reports_dir')} (also: dvc metrics show; dvc plots show)",
        f"  MLflow:     {uri}   (UI: make ui, then {params.tracking.ui_url})",
        "  Prefect:    make ui, then http://127.0.0.1:4200 (flow runs, artifacts)",
        *hkfr_lines(metrics.get("hkfr")),
        *ctr_lines(metrics.get("ctr")),
        *news_lines(metrics.get("news")),
        "  online features, e.g.: scenerec online --user-id " + str(metrics.get("example_user", "<user_id>"))
        + " --poi-id " + str(metrics.get("example_poi", "<poi_id>")),
    ]
    try:
        import mlflow

        models = [m.name for m in mlflow.MlflowClient(uri).search_registered_models()]
        lines.append("  registered models: " + (", ".join(models) if models else "none yet"))
    except Exception as e:  # noqa: BLE001 - the summary must not fail the run
        lines.append(f"  registered models: could not list ({e})")
    return "\n".join(lines)


@flow(name="pipeline", log_prints=True)
def pipeline(batch_dir: str = "", seed: int = SEED, generate: GenerateConfig = GenerateConfig(),
             ingest: IngestConfig = IngestConfig(), features: FeaturesConfig = FeaturesConfig(),
             llm: LLMConfig = LLMConfig(), contrastive: ContrastiveConfig = ContrastiveConfig(),
             distill: DistillConfig = DistillConfig(), embed: EmbedConfig = EmbedConfig(),
             hkfr: HKFRConfig = HKFRConfig(), ctr: CTRConfig = CTRConfig(), news: NewsConfig = NewsConfig(),
             params_file: str = DEFAULT_PARAMS, isolate: bool = True) -> dict:
    """Run the platform end to end: generate, ingest, features, llm, hkfr, ctr, news.

    Args:
        batch_dir: Your batch folder (the data contract); empty = generate a synthetic batch first.
        seed: Random seed; as shown = the params file's.
        generate: Size of the synthetic world (the generate section of the params file).
        ingest: Validation and curation.
        features: Feature tables and Feast.
        llm: Corpus, tokenizer, model and continual pretraining.
        contrastive: Pair mining and contrastive fine-tuning of the scene encoder.
        distill: HomoDistil.
        embed: Which encoder writes the scene / PoI embeddings.
        hkfr: HKFR instruction tuning.
        ctr: The CTR / CTCVR model; pick it from the drop-down.
        news: PerCoNet news recommendation.
        params_file: Parameters file, relative to the project folder (e.g. params/small.yaml for the
            two-minute tour).
        isolate: With overrides or another params file, the whole run logs to its own MLflow
            experiment and registered models and writes to its own data folder; untick to write
            into the params file's.

    In every section, fields you leave as shown keep the params file's values; a changed field is an override.
    """
    seed_override = None if seed == SEED else seed
    sections = dict(generate=generate, ingest=ingest, features=features, llm=llm, contrastive=contrastive,
                    distill=distill, embed=embed, hkfr=hkfr, ctr=ctr, news=news)
    params, overridden = flow_params(params_file, None, isolate, seed=seed_override, **sections)
    logger = get_run_logger()
    common = dict(params_file=params_file, isolate=isolate)
    with mlflow_run(params, "pipeline") as run_id, pipeline_context(run_id, overridden, isolate):
        if not batch_dir:
            generate_flow(generate=generate, seed=seed, **common)
            batch = str(params.path("raw_batch"))
        else:
            batch = batch_dir
        ingested = ingest_flow(batch_dir=batch, ingest=ingest, **common)
        feats = features_flow(features=features, **common)
        llm_results = llm_flow(llm=llm, contrastive=contrastive, distill=distill, embed=embed, **common)
        hkfr_results = hkfr_flow(hkfr=hkfr, **common)
        ctr_results = ctr_flow(ctr=ctr, **common)
        news_results = news_flow(news=news, **common)
        if overridden or is_profile(params_file):
            logger.info("profile or overridden parameters: outputs not recorded in dvc.lock")
        else:
            logger.info(record_task(params, bool(batch_dir)))
        metrics = {"ingest": ingested, "features": feats, "llm": llm_results, "hkfr": hkfr_results,
                   "ctr": ctr_results,
                   "news": news_results}
        try:
            from components.steps import example_keys

            metrics.update(example_keys(params))
        except Exception:  # noqa: BLE001 - only for the closing hint
            pass
        summary = where_to_look(params, metrics)
        create_markdown_artifact(key="pipeline-summary",
                                 markdown="```\n" + summary + "\n```\n\n" + mlflow_links(params, run_id))
        tracking.log_dict(params, run_id, metrics, "pipeline_metrics.json")
    return {"summary": summary, **metrics}
