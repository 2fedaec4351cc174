"""Peers a user would train instead of SceneRec's CTR model, on the same encoded splits:
LightGBM (components/ctr/tabular.py, variant chosen on validation) and DeepCTR-Torch's DIN and ESMM.

DeepCTR-Torch is a benchmark extra (``pip install -e .[bench]``), never a product dependency. Its
models are fed every column the tree model sees (numeric Feast features, distance, position, log
price, scene fields, category, bands, user and PoI ids) and DIN also the user's newest ``maxlen``
behaviours (PoI and category) before the request. Each trains with its own ``fit`` one epoch at a
time, stopping when validation CTR AUC has not improved for ``patience`` epochs (the best epoch's
weights are kept), as a user of the library would.
"""
from __future__ import annotations

import copy
import time

import numpy as np

from components.ctr.data import CTRDataset, RequestData, gather_history
from components.ctr.metrics import auc
from components.ctr.tabular import flat_labels, flat_rows

PEERS = ("lightgbm", "deepctr_din", "deepctr_esmm")


def _offline_deepctr() -> None:
    """Import deepctr_torch without its import-time PyPI version check (a thread that calls the
    network): the benchmark stays offline. Its ``utils`` module holds only that check."""
    import sys
    import types

    if "deepctr_torch" not in sys.modules and "deepctr_torch.utils" not in sys.modules:
        stub = types.ModuleType("deepctr_torch.utils")
        stub.check_version = lambda version: None
        sys.modules["deepctr_torch.utils"] = stub


def _inputs(data: RequestData, ds: CTRDataset, maxlen: int) -> dict[str, np.ndarray]:
    """DeepCTR input dict: one row per real candidate; PoI / category ids shifted by one so 0 pads."""
    x = flat_rows(data, ds, history=False, ids=True)
    lab = flat_labels(data)
    out = {}
    for c in x.columns:
        if str(x[c].dtype) == "category":
            out[c] = x[c].cat.codes.to_numpy(np.int64) + (1 if c in ("poi_idx", "category") else 0)
        else:
            out[c] = x[c].to_numpy(np.float32)
    h = gather_history(ds.history, ds.pois, data.hist_start, data.hist_end, maxlen)
    rows, mask = h["hist_poi"], h["hist_mask"]
    pad = maxlen - rows.shape[1]
    hp = np.where(mask, ds.pois.vocab_id[rows] + 1, 0)
    hc = np.where(mask, ds.pois.category[rows] + 1, 0)
    hp, hc = (np.pad(a, ((0, 0), (0, pad))) for a in (hp, hc))
    out["hist_poi_idx"] = hp[lab["row"]]
    out["hist_category"] = hc[lab["row"]]
    out["seq_length"] = mask.sum(1)[lab["row"]].astype(np.int64)
    return out


def _columns(ds: CTRDataset, sample: dict, embed_dim: int, maxlen: int, with_history: bool):
    _offline_deepctr()
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat

    sizes = {"poi_idx": len(ds.encoder.pois) + 2, "category": ds.encoder.n_categories + 2,
             "user_idx": len(ds.encoder.users) + 1}
    cols = []
    for name, v in sample.items():
        if v.ndim == 2 or name == "seq_length":  # the history sequences are added below
            continue
        if v.dtype == np.int64:
            cols.append(SparseFeat(name, sizes.get(name, int(max(v.max(), 0)) + 64), embedding_dim=embed_dim))
        else:
            cols.append(DenseFeat(name, 1))
    if with_history:
        cols += [VarLenSparseFeat(SparseFeat("hist_poi_idx", sizes["poi_idx"], embedding_dim=embed_dim,
                                             embedding_name="poi_idx"), maxlen=maxlen, length_name="seq_length"),
                 VarLenSparseFeat(SparseFeat("hist_category", sizes["category"], embedding_dim=embed_dim,
                                             embedding_name="category"), maxlen=maxlen, length_name="seq_length")]
    return cols


def train_deepctr(kind: str, ds: CTRDataset, seed: int = 0, embed_dim: int = 16, maxlen: int = 50,
                  batch_size: int = 1024, max_epochs: int = 30, patience: int = 2, lr: float = 1e-3):
    """Fit DeepCTR-Torch ``din`` or ``esmm`` with early stopping on validation CTR AUC; returns the
    model and info (epochs, seconds, training rows)."""
    import torch

    _offline_deepctr()
    from deepctr_torch.models import DIN
    from deepctr_torch.models.multitask import ESMM

    torch.manual_seed(seed)
    np.random.seed(seed)
    xtr, xva = _inputs(ds.train, ds, maxlen), _inputs(ds.valid, ds, maxlen)
    ytr, yva = flat_labels(ds.train), flat_labels(ds.valid)
    din = kind == "din"
    cols = _columns(ds, xtr, embed_dim, maxlen, with_history=din)
    if din:
        model = DIN(cols, ["poi_idx", "category"], dnn_hidden_units=(256, 128), att_hidden_size=(64, 16),
                    dnn_dropout=0.1, seed=seed, device="cpu")
        y = ytr["click"]
    else:
        model = ESMM(cols, tower_dnn_hidden_units=(256, 128), dnn_dropout=0.1, seed=seed, device="cpu")
        y = np.stack([ytr["click"], ytr["order"]], 1)
    model.compile(torch.optim.Adam(model.parameters(), lr=lr), "binary_crossentropy")
    t0, c0 = time.perf_counter(), time.process_time()
    best, bad, epochs = (-1.0, None), 0, 0
    for _ in range(max_epochs):
        model.fit(xtr, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=True)
        epochs += 1
        p = model.predict(xva, batch_size=8192)
        v = auc(yva["click"], p[:, 0] if p.ndim == 2 else p)
        if v > best[0] + 1e-5:
            best, bad = (v, copy.deepcopy(model.state_dict())), 0
        else:
            bad += 1
            if bad >= patience:
                break
    model.load_state_dict(best[1])
    info = {"seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(time.process_time() - c0, 2),
            "epochs_run": epochs, "best_valid_auc_ctr": best[0],
            "train_rows": int(ds.train.mask.sum())}
    return DeepCTRPeer(kind, model, maxlen), info


class DeepCTRPeer:
    """A fitted DeepCTR-Torch model behind the ``predict`` dict of components.ctr.train."""

    def __init__(self, kind: str, model, maxlen: int):
        self.kind, self.model, self.maxlen = kind, model, maxlen

    def predict(self, data: RequestData, ds: CTRDataset) -> dict[str, np.ndarray]:
        out = flat_labels(data)
        p = self.model.predict(_inputs(data, ds, self.maxlen), batch_size=8192)
        if p.ndim == 2 and p.shape[1] == 2:  # ESMM: [ctr, ctcvr]
            out["ctr"], out["ctcvr"] = p[:, 0], p[:, 1]
        else:  # DIN is single-task: it ranks CTCVR by its CTR score (what a user of it would serve)
            out["ctr"] = out["ctcvr"] = p.reshape(-1)  # (n, 1) from DIN
        return out
