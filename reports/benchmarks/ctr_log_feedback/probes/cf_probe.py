"""CF probe: how much of the true user x PoI affinity do CF scores recover, and what do they add to LightGBM?"""
import sys, types
import numpy as np, pandas as pd, torch
sys.path.insert(0, "."); sys.path.insert(0, "benchmarks")
from components.config import load_params
from components.ctr.data import build_dataset
from components.ctr import tabular, train as ctrain
from components.ctr.metrics import auc
import lightgbm as lgb
import alt_generator as ag
torch.set_num_threads(1)
world = sys.argv[1]; epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 5; dim = 16
params = load_params(f"data/worlds/{world}/params.yaml")
ds = build_dataset(params)
w = ag.make_world(np.random.default_rng(params.seed), 1500, 400, 60)
n_u, n_p = len(ds.encoder.users) + 1, len(ds.encoder.pois) + 1
fake = types.SimpleNamespace(user_emb=torch.nn.Embedding(n_u, 1), poi_emb=torch.nn.Embedding(n_p, 1))
pid = np.asarray(ds.pois.ids)
mode = sys.argv[3] if len(sys.argv) > 3 else "all"
if mode == "all":
    U, P = ctrain.log_bpr(fake, ds, params.ctr, dim, epochs, 0)
else:  # drop the log entries that are a labelled impression's own click / order (within 120 s after it)
    from components.ctr.id_pretrain import behaviour_pairs, pretrain_id_embeddings
    h = ds.history
    uarr = np.empty(len(h.ts), object)
    for uid, s0 in h.user_start.items(): uarr[s0:h.user_end[uid]] = uid
    imp = pd.read_parquet(params.path("curated_dir") / "impressions.parquet", columns=["ts", "user_id", "poi_id", "click"])
    imp = imp[imp.click == 1]
    its = pd.to_datetime(imp.ts, utc=True).astype("int64").to_numpy()
    key_i = pd.Series(imp.user_id.astype(str).to_numpy() + "|" + imp.poi_id.astype(str).to_numpy())
    key_h = pd.Series(uarr.astype(str)) + "|" + pd.Series(pid[h.poi_row])
    ev = pd.DataFrame({"k": key_i, "t": its}).sort_values("t")
    he = pd.DataFrame({"k": key_h, "t": h.ts, "i": np.arange(len(h.ts))}).sort_values("t")
    m = pd.merge_asof(he, ev.rename(columns={"t": "ti"}), left_on="t", right_on="ti", by="k", direction="backward", tolerance=120 * 10**9)
    drop = np.zeros(len(h.ts), bool); drop[m.i[m.ti.notna()].to_numpy()] = True
    print("log entries that are impressions' own feedback: %d of %d" % (drop.sum(), len(drop)))
    keep = ~drop
    from components.ctr.data import History
    import dataclasses
    # rebuild user ranges over the kept entries
    cum = np.r_[0, np.cumsum(keep)]
    starts = {u: int(cum[s0]) for u, s0 in h.user_start.items()}; ends = {u: int(cum[h.user_end[u]]) for u in h.user_start}
    user_rows = {int(ui): (starts[u], ends[u]) for u, ui in zip(h.user_start, ds.encoder.users.encode(list(h.user_start)))}
    users, pois, wts = behaviour_pairs(user_rows, h.ts[keep], ds.pois.vocab_id[h.poi_row[keep]], h.behavior[keep], params.ctr.profile_behavior_weights, ds.valid_start_ns)
    U, P = pretrain_id_embeddings(users, pois, wts, n_u, n_p, dim, epochs, 0)
U, P = U.numpy(), P.numpy()
pid = np.asarray(ds.pois.ids)

def rows(data):
    rr, kk = np.nonzero(data.mask)
    u = data.user[rr]; prow = data.poi_row[rr, kk]; pv = ds.pois.vocab_id[prow]
    uid = data.user_id[rr]
    uix = pd.Series(uid).str[1:].astype(int).to_numpy(); pix = pd.Series(pid[prow]).str[1:].astype(int).to_numpy()
    aff = np.einsum("ij,ij->i", w["U"][uix], w["V"][pix])
    dot = np.einsum("ij,ij->i", U[u], P[pv])
    return dot, aff, pix
for s in ("valid", "test"):
    dot, aff, pix = rows(getattr(ds, s))
    d = pd.DataFrame({"dot": dot, "aff": aff, "p": pix})
    dm = d.groupby("p")[["dot", "aff"]].transform(lambda x: x - x.mean())
    print(world, s, "corr(bpr dot, aff) %.3f within-PoI %.3f" % (np.corrcoef(dot, aff)[0, 1], np.corrcoef(dm["dot"], dm["aff"])[0, 1]))
cfg = tabular.GBDTConfig()
base = {s: tabular.flat_rows(getattr(ds, s), ds, True, False) for s in ("train", "valid", "test")}
y = {s: tabular.flat_labels(getattr(ds, s))["click"] for s in base}
for name in ("base", "bpr_dot", "true_aff"):
    xs = dict(base)
    if name != "base":
        xs = {}
        for s, x in base.items():
            dot, aff, _ = rows(getattr(ds, s))
            x = x.copy(); x[name] = dot if name == "bpr_dot" else aff; xs[s] = x
    dtr = lgb.Dataset(xs["train"], y["train"]); dva = lgb.Dataset(xs["valid"], y["valid"], reference=dtr)
    b = lgb.train(tabular._params(cfg, 0), dtr, 2000, valid_sets=[dva], callbacks=[lgb.early_stopping(50, verbose=False)])
    print(world, name, "valid %.4f test %.4f" % (auc(y["valid"], b.predict(xs["valid"])), auc(y["test"], b.predict(xs["test"]))), flush=True)
