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
from components.config import (ContrastiveConfig, CTRConfig, DistillConfig, EmbedConfig, FeaturesConfig,
                               GenerateConfig, HKFRConfig, IngestConfig, LLMConfig, NewsConfig, Params)
from components.versioning import record_outputs
from flows.ctr import ctr as ctr_flow
from flows.features import features as features_flow
from flows.hkfr import hkfr as hkfr_flow
from flows.ingest import generate as generate_flow
from flows.ingest import ingest as ingest_flow
from flows.llm import llm as llm_flow
from flows.news import news as news_flow
from flows.settings import flow_params

DVC_STAGES = ["generate", "ingest", "features", "corpus", "pretrain", "pairs", "contrastive_teacher", "distill",
              "contrastive_student", "embed", "knowledge", "instruct", "hkfr_register", "ctr", "ctr_register", "news_data", "news",
              "news_register"]


@task(name="record-in-dvc", cache_policy=NO_CACHE)
def record_task(params: Params) -> str:
    return record_outputs(params.root, DVC_STAGES)


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
        f"  MLflow:     {uri}   (UI: make ui, then http://127.0.0.1:5000)",
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
def pipeline(batch_dir: str | None = None, seed: int | None = None, generate: GenerateConfig | None = None,
             ingest: IngestConfig | None = None, features: FeaturesConfig | None = None,
             llm: LLMConfig | None = None, contrastive: ContrastiveConfig | None = None,
             distill: DistillConfig | None = None, embed: EmbedConfig | None = None,
             hkfr: HKFRConfig | None = None, ctr: CTRConfig | None = None, news: NewsConfig | None = None,
             params_file: str | None = None) -> dict:
    """Run the platform end to end on a synthetic batch (default) or on your own batch folder."""
    params, overridden = flow_params(params_file, seed=seed, generate=generate, ingest=ingest, features=features,
                                     llm=llm, contrastive=contrastive, distill=distill, embed=embed, hkfr=hkfr,
                                     ctr=ctr, news=news)
    logger = get_run_logger()
    params_path = str(params.root / "params.yaml") if params_file is None else params_file
    sections = dict(generate=generate, ingest=ingest, features=features)
    with tracking.tracked_run(params, "pipeline", tags={"scenerec.flow": "pipeline"}) as run_id:
        if batch_dir is None:
            generate_flow(generate=sections["generate"], seed=seed, params_file=params_path, parent_run_id=run_id)
            batch = str(params.path("raw_batch"))
        else:
            batch = batch_dir
        ingested = ingest_flow(batch_dir=batch, ingest=sections["ingest"], params_file=params_path,
                               parent_run_id=run_id)
        feats = features_flow(features=sections["features"], params_file=params_path, parent_run_id=run_id)
        llm_results = llm_flow(llm=llm, contrastive=contrastive, distill=distill, embed=embed,
                               params_file=params_path, parent_run_id=run_id)
        hkfr_results = hkfr_flow(hkfr=hkfr, params_file=params_path, parent_run_id=run_id)
        ctr_results = ctr_flow(ctr=ctr, params_file=params_path, parent_run_id=run_id)
        news_results = news_flow(news=news, params_file=params_path, parent_run_id=run_id)
        if batch_dir is None and not overridden:
            logger.info(record_task(params))
        else:
            logger.info("custom batch or overridden parameters: outputs not recorded in dvc.lock")
        metrics = {"ingest": ingested, "features": feats, "llm": llm_results, "hkfr": hkfr_results,
                   "ctr": ctr_results,
                   "news": news_results}
        try:
            from components.steps import example_keys

            metrics.update(example_keys(params))
        except Exception:  # noqa: BLE001 - only for the closing hint
            pass
        summary = where_to_look(params, metrics)
        create_markdown_artifact(key="pipeline-summary", markdown="```\n" + summary + "\n```")
        tracking.log_dict(params, run_id, metrics, "pipeline_metrics.json")
    return {"summary": summary, **metrics}
