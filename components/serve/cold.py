"""The cold-start path for PoIs the model's catalogue does not know."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from components.ctr.data import PoiTable

COLD_POI = "__cold_poi__"  # the catalogue row every unknown PoI is scored as


def with_cold_row(table: PoiTable, n_categories: int) -> PoiTable:
    """``table`` plus one row for unknown PoIs: unknown ID embedding (0), the spare category index
    (``n_categories``: the category embedding's spare slot), unknown bands (0), no location (distance falls
    back as for a missing geohash), zero text embedding and the catalogue's median log price."""
    if COLD_POI in table.index:
        return table
    cat = lambda a, v: np.concatenate([a, np.array([v], dtype=a.dtype)])  # noqa: E731
    text = None if table.text_emb is None else np.vstack([table.text_emb, np.zeros((1, table.text_emb.shape[1]),
                                                                                   table.text_emb.dtype)])
    logp = None if table.log_price is None else cat(table.log_price, float(np.median(table.log_price)))
    return replace(table, ids=[*table.ids, COLD_POI], index={**table.index, COLD_POI: len(table.ids)},
                   vocab_id=cat(table.vocab_id, 0), category=cat(table.category, n_categories),
                   price_band=cat(table.price_band, 0), rating_band=cat(table.rating_band, 0),
                   delivery_band=cat(table.delivery_band, 0), lat=cat(table.lat, np.nan), lon=cat(table.lon, np.nan),
                   text_emb=text, log_price=logp)


def map_unknown(poi_ids, table: PoiTable) -> tuple[list[str], np.ndarray]:
    """(ids with every unknown PoI replaced by COLD_POI, bool flag per id: was it unknown)."""
    known = table.index
    flags = np.fromiter((str(p) not in known or str(p) == COLD_POI for p in poi_ids), bool, count=len(poi_ids))
    return [COLD_POI if f else str(p) for p, f in zip(poi_ids, flags)], flags
