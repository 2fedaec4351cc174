"""Headroom ladder on an other-generator world: LightGBM (tabular+history) plus one true latent term at a time."""
import sys
import numpy as np, pandas as pd
sys.path.insert(0, "."); sys.path.insert(0, "benchmarks")
from components.config import load_params
from components.ctr.data import build_dataset
from components.ctr import tabular
from components.ctr.metrics import auc
import lightgbm as lgb
import alt_generator as ag

world = sys.argv[1]
params = load_params(f"data/worlds/{world}/params.yaml")
ds = build_dataset(params)
w = ag.make_world(np.random.default_rng(params.seed), 1500, 400, 60)
imp = pd.read_parquet(params.path("curated_dir") / "impressions.parquet", columns=["request_id", "ts", "user_id", "poi_id"])
uix = imp.user_id.str[1:].astype(int).to_numpy(); pix = imp.poi_id.str[1:].astype(int).to_numpy()
t = pd.to_datetime(imp.ts, utc=True); tf = ((t - w["start"]).dt.total_seconds() / 86400 / 60).to_numpy()
aff = np.einsum("ij,ij->i", w["U"][uix], w["V"][pix]) / np.sqrt(ag.K * 0.74)
relp = np.maximum(w["log_price"][pix] - np.log(w["budget"][uix]), 0)
trend = w["trend"][pix] * (tf - 0.5)
lat = pd.DataFrame({"aff": aff, "relp": relp, "trend": trend, "quality": w["quality"][pix]},
                   index=pd.MultiIndex.from_arrays([imp.request_id, imp.poi_id]))
print(imp.poi_id.head(3).tolist())
def extra(data, cols):
    rr, kk = np.nonzero(data.mask)
    idx = list(zip(data.request_id[rr], np.asarray(ds.pois.ids)[data.poi_row[rr, kk]]))
    return lat.loc[idx, cols].reset_index(drop=True)
cfg = tabular.GBDTConfig()
base = {s: tabular.flat_rows(getattr(ds, s), ds, True, False) for s in ("train", "valid", "test")}
y = {s: tabular.flat_labels(getattr(ds, s))["click"] for s in base}
for cols in ([], ["aff"], ["relp"], ["trend"], ["quality"], ["aff", "relp", "trend", "quality"]):
    xs = {s: pd.concat([x.reset_index(drop=True), extra(getattr(ds, s), cols)], axis=1) for s, x in base.items()} if cols else base
    dtr = lgb.Dataset(xs["train"], y["train"]); dva = lgb.Dataset(xs["valid"], y["valid"], reference=dtr)
    b = lgb.train(tabular._params(cfg, 0), dtr, 2000, valid_sets=[dva], callbacks=[lgb.early_stopping(50, verbose=False)])
    print(world, "+".join(cols) or "base", "valid %.4f test %.4f" % (auc(y["valid"], b.predict(xs["valid"])), auc(y["test"], b.predict(xs["test"]))), flush=True)
