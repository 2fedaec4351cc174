import sys, types, torch
sys.path.insert(0, ".")
import components.training as tr
orig = tr.fit
def spy(*a, **k):
    r = orig(*a, **k)
    print("  stopped at epoch", r.epoch, "best", r.best, [round(h.get("holdout_auc", 0), 4) for h in r.history], flush=True)
    return r
tr.fit = spy
from components.config import load_params
from components.ctr.data import build_dataset
from components.ctr import train as ctrain
for w in sys.argv[1:]:
    params = load_params("params.yaml" if w == "default" else f"data/worlds/{w}/params.yaml")
    ds = build_dataset(params)
    cfg = params.ctr.model_copy(update={"log_bpr_holdout": 0.1})
    fake = types.SimpleNamespace(user_emb=torch.nn.Embedding(len(ds.encoder.users) + 1, 1), poi_emb=torch.nn.Embedding(len(ds.encoder.pois) + 1, 1))
    print(w); ctrain.log_bpr(fake, ds, cfg, 16, 40, 0)
