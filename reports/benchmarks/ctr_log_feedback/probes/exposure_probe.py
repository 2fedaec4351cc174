"""Probe: how much do a user's earlier impressions (exposures, clicked or not) add to LightGBM?"""
import sys, time
import numpy as np, pandas as pd
sys.path.insert(0, ".")
from components.config import load_params
from components.ctr.data import build_dataset
from components.ctr import tabular
from components.ctr.metrics import auc
import lightgbm as lgb

world = sys.argv[1]
pf = "params.yaml" if world == "default" else f"data/worlds/{world}/params.yaml"
params = load_params(pf)
ds = build_dataset(params)
imp = pd.read_parquet(params.path("curated_dir") / "impressions.parquet", columns=["request_id", "ts", "user_id", "poi_id", "click"])
imp["ts"] = pd.to_datetime(imp["ts"], utc=True).astype("int64")
imp = imp.sort_values(["ts", "request_id"]).reset_index(drop=True)
# point-in-time running counts per (user, poi) and per user, strictly before each request's ts
key_up = imp.user_id + "|" + imp.poi_id
def prior(keys, vals):
    # cumulative sum of vals over earlier *requests* (ts strictly smaller) per key
    df = pd.DataFrame({"k": keys, "ts": imp.ts, "v": vals})
    g = df.groupby(["k", "ts"], sort=False)["v"].sum().reset_index().sort_values("ts")
    g["cum"] = g.groupby("k")["v"].cumsum() - g["v"]
    return df.merge(g[["k", "ts", "cum"]], on=["k", "ts"], how="left")["cum"].to_numpy()
one = np.ones(len(imp))
feat = pd.DataFrame({"request_id": imp.request_id, "poi_id": imp.poi_id,
    "up_exp": prior(key_up, one), "up_clk": prior(key_up, imp.click.to_numpy()),
    "u_exp": prior(imp.user_id, one), "u_clk": prior(imp.user_id, imp.click.to_numpy()),
    "p_exp": prior(imp.poi_id, one), "p_clk": prior(imp.poi_id, imp.click.to_numpy())})
feat = feat.set_index(["request_id", "poi_id"])

def extra(data):
    rr, kk = np.nonzero(data.mask)
    rid = data.request_id[rr]
    pid = np.asarray(ds.pois.ids)[data.poi_row[rr, kk]]
    f = feat.loc[list(zip(rid, pid))].to_numpy()
    up_exp, up_clk, u_exp, u_clk, p_exp, p_clk = f.T
    return pd.DataFrame({"up_exp": up_exp, "up_noclk": up_exp - up_clk, "u_exp": np.log1p(u_exp),
                         "u_ctr": (u_clk + 1) / (u_exp + 10), "p_ctr": (p_clk + 1) / (p_exp + 10)})

cfg = tabular.GBDTConfig()
res = {}
for variant in ("tabular+history", "tabular+history+exp", "tabular+history+ids", "tabular+history+ids+exp"):
    ids = "ids" in variant
    xs = {s: tabular.flat_rows(getattr(ds, s), ds, True, ids) for s in ("train", "valid", "test")}
    if variant.endswith("exp"):
        xs = {s: pd.concat([x.reset_index(drop=True), extra(getattr(ds, s))], axis=1) for s, x in xs.items()}
    y = {s: tabular.flat_labels(getattr(ds, s)) for s in xs}
    out = []
    for seed in (0, 1):
        dtr = lgb.Dataset(xs["train"], y["train"]["click"]); dva = lgb.Dataset(xs["valid"], y["valid"]["click"], reference=dtr)
        b = lgb.train(tabular._params(cfg, seed), dtr, cfg.max_rounds, valid_sets=[dva], callbacks=[lgb.early_stopping(50, verbose=False)])
        out.append((auc(y["valid"]["click"], b.predict(xs["valid"])), auc(y["test"]["click"], b.predict(xs["test"]))))
    res[variant] = np.mean(out, 0)
    print(world, variant, "valid %.4f test %.4f" % tuple(res[variant]), flush=True)
