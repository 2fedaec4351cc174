"""An independent synthetic food-delivery world, written apart from ``components/data/generate.py``.

    python benchmarks/alt_generator.py --out /tmp/alt --seed 0 [--n-users 1500 --n-pois 400 ...]

It writes a batch in the raw data contract (pois, users, behaviors, impressions + truth/impressions)
from a latent structure of its own, so a CTR model can be tested on a world it was not shaped on.
The log is simulated day by day; every probability below is a logistic function of a sum of terms.

Generative model (and the property of real delivery / e-commerce logs that motivates each part):

* Low-rank affinity: users u ~ N(0, I_10) (+ an age-group offset), PoIs v = 0.5 * centroid(category)
  + 0.7 * noise; affinity = u.v standardised -- real preferences are collaborative, categories explain
  only part of them (two noodle shops can attract very different people).
  ``affinity_scale`` (default 1) multiplies its weight in the click logit: markets differ in how much
  personal taste decides (a cuisine market more, a convenience market less).
* Popularity: log-popularity = -0.9 * log(rank) of a random ranking (power law), plus a linear trend
  (about a quarter of the PoIs rise, a fifth fade) -- real catalogues are head-heavy and drift.
* Habit: decayed per-(user, PoI) counts of past clicks and orders (updated at the end of every
  simulated day) raise both click and order logits -- reorders dominate real delivery logs.
* Distance: users have a home and a work / school place, PoIs a location; the request location comes
  from the location type; the logit falls linearly with km, more steeply in rain and snow -- delivery
  is local, and bad weather shrinks the radius couriers and users accept.
* Scene: a category x meal-slot suitability table (breakfast, lunch, afternoon, dinner, late night),
  rain / snow favour hot and heavy food, temperature is a continuous slope on cold vs hot categories,
  holidays and weekends favour pricier PoIs -- demand in real logs follows the clock and the weather.
* Meal times (``meal_shift``, default 0) move the hourly activity and the five meal slots by that many
  hours together -- markets dine at different clocks (lunch at 12 in one country, at 14 in another), so a
  model with slot edges fixed for one market reads another's meals in the wrong slots.
* Location type is drawn from hour, weekday, holiday and occupation (office / school on working
  days, home in the evening, outdoor at weekends) -- the scene is correlated, not independent noise.
* Examination: P(click) = P(examine | position) * P(attractive), P(examine) = 1 / (1 + pos)^0.7 --
  the cascade / position-bias model fitted to real ranked lists.
* Conversion: P(order | click) from price vs the user's (hidden) budget, latent quality, the
  realised delivery time (shop minutes + distance + weather) and habit -- people click expensive or
  far shops but do not buy from them.
* Page views come from a "legacy ranker" (stale popularity, a noisy copy of the user factors,
  distance, Gumbel noise) -- logged impressions are never random, they are what an old model chose.
* Behaviour log: per-user sessions (log-normal activity) of search -> views -> clicks -> favourite /
  order from the same utilities, plus a click / order row for every clicked / ordered impression --
  real logs are long, heterogeneous and heavy-tailed per user.
* Cold start: ~10 % of users register and ~10 % of PoIs open in the last quarter of the range.
* Hidden noise: a per-impression N(0, 1.2) on the attraction logit and N(0, 0.6) on the order logit
  is drawn and never written; the truth file holds the exact marginal probabilities (Gauss-Hermite
  expectation over that noise), so the oracle is the best predictor given every latent.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

END = pd.Timestamp("2026-03-31T00:00:00Z")  # fixed end of the range: every timestamp is in the past
K = 10  # latent dimension
GEOHASH_BASE32 = np.array(list("0123456789bcdefghjkmnpqrstuvwxyz"))
LAT0, LON0 = 39.90, 116.40  # an imaginary city; coordinates are simulated in km around this point
HOLIDAYS = {pd.Timestamp(d).date() for d in ["2026-01-01", "2026-01-02", *pd.date_range("2026-02-15", "2026-02-23"),
                                             *pd.date_range("2026-04-04", "2026-04-06"),
                                             *pd.date_range("2026-05-01", "2026-05-05")]}  # public holidays
# name: (meal-slot suitability: breakfast, lunch, afternoon, dinner, late; hot/heavy; cold; base price;
#        prep minutes; share of catalogue; dishes)
CATEGORIES: dict[str, tuple] = {
    "noodles": ((0.2, 0.8, -0.3, 0.6, 0.3), 0.8, 0.0, 30, 15, 9, ["beef noodle soup", "dan dan noodles", "zhajiang noodles", "wonton noodles"]),
    "rice bowls": ((0.0, 1.0, -0.4, 0.6, -0.2), 0.5, 0.0, 32, 12, 9, ["braised pork rice", "chicken teriyaki bowl", "curry rice", "egg fried rice"]),
    "coffee & tea": ((1.0, 0.1, 0.8, -0.5, -0.6), 0.1, 0.4, 28, 8, 6, ["latte", "americano", "matcha latte", "cold brew"]),
    "burgers": ((-0.8, 0.5, 0.1, 0.6, 0.7), 0.3, 0.0, 45, 15, 6, ["cheeseburger", "chicken burger", "fries", "onion rings"]),
    "salad": ((-0.3, 0.9, 0.2, 0.2, -0.8), -0.5, 0.3, 42, 10, 4, ["caesar salad", "quinoa bowl", "poke bowl", "greek salad"]),
    "hotpot": ((-1.0, 0.2, -0.5, 1.0, 0.6), 1.0, -0.3, 95, 30, 4, ["spicy broth hotpot", "mushroom broth", "beef slices", "tofu skin"]),
    "bakery": ((0.9, -0.2, 0.7, -0.6, -0.5), 0.0, 0.0, 25, 10, 5, ["croissant", "egg tart", "sourdough", "cream bun"]),
    "sushi": ((-0.8, 0.6, 0.0, 0.7, 0.0), -0.3, 0.2, 85, 20, 4, ["salmon nigiri", "california roll", "sashimi set", "tuna maki"]),
    "pizza": ((-0.9, 0.4, 0.0, 0.7, 0.6), 0.4, 0.0, 70, 25, 4, ["margherita", "pepperoni pizza", "durian pizza", "garlic bread"]),
    "dumplings": ((0.6, 0.5, -0.2, 0.5, 0.4), 0.6, 0.0, 28, 15, 6, ["pork dumplings", "xiaolongbao", "potstickers", "shrimp dumplings"]),
    "bbq": ((-1.0, -0.3, -0.4, 0.7, 1.0), 0.7, 0.0, 75, 25, 5, ["lamb skewers", "grilled wings", "bbq pork", "grilled squid"]),
    "desserts": ((-0.4, -0.2, 0.9, 0.1, 0.3), -0.2, 1.0, 35, 10, 4, ["mango pudding", "cheesecake", "ice cream", "tiramisu"]),
    "bubble tea": ((-0.4, 0.2, 1.0, 0.0, 0.2), -0.1, 1.0, 22, 8, 6, ["brown sugar boba", "taro milk tea", "fruit tea", "cheese foam tea"]),
    "convenience store": ((0.3, 0.0, 0.2, 0.0, 0.8), 0.0, 0.3, 30, 12, 4, ["instant noodles", "snacks", "bottled drinks", "onigiri"]),
    "fried chicken": ((-0.8, 0.3, 0.3, 0.5, 0.9), 0.5, 0.0, 40, 15, 5, ["korean fried chicken", "popcorn chicken", "chicken wings", "chicken strips"]),
    "porridge": ((1.0, 0.2, -0.3, 0.2, 0.2), 0.9, -0.2, 22, 12, 3, ["congee with century egg", "millet porridge", "seafood congee", "youtiao"]),
    "malatang": ((-0.5, 0.4, 0.0, 0.6, 0.7), 0.9, -0.2, 38, 15, 4, ["malatang", "spicy hot pot soup", "mala xiang guo", "sour spicy noodles"]),
    "dim sum": ((0.8, 0.6, 0.3, -0.2, -0.5), 0.3, 0.0, 55, 20, 3, ["har gow", "siu mai", "char siu bao", "rice rolls"]),
    "korean": ((-0.5, 0.7, -0.2, 0.6, 0.2), 0.6, 0.0, 55, 20, 3, ["bibimbap", "kimchi stew", "tteokbokki", "bulgogi"]),
    "fruit & juice": ((0.4, 0.1, 0.7, -0.2, -0.3), -0.5, 0.8, 30, 8, 3, ["fresh orange juice", "fruit platter", "smoothie", "coconut water"]),
}
CAT_NAMES = list(CATEGORIES)
SLOT_SUIT = np.array([c[0] for c in CATEGORIES.values()])  # (C, 5)
HOT, COLD, BASE_PRICE, PREP, SHARE = (np.array([c[i] for c in CATEGORIES.values()], float) for i in range(1, 6))
STYLE_WORDS = ["spicy", "light", "hearty", "sweet", "healthy", "late-night"]
HOUR_W = np.array([.4, .2, .1, .05, .05, .1, .4, 1., 1.3, .9, 1.2, 2.6, 3., 1.6, .9, 1., 1.1, 2.2, 3., 2.4, 1.4, 1., .9, .7])
LOC_TYPES = np.array(["home", "office", "school", "outdoor", "other"])
WEATHER_STATES = ["sunny", "cloudy", "precip", "windy", "foggy"]
NOISE_CLICK, NOISE_ORDER = 1.2, 0.6


def geohash(lat: np.ndarray, lon: np.ndarray, precision: int = 6) -> np.ndarray:
    """Vectorised geohash encoder (longitude bit first, base32)."""
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    lo = [np.full(lat.shape, -180.0), np.full(lat.shape, -90.0)]
    hi = [np.full(lat.shape, 180.0), np.full(lat.shape, 90.0)]
    val, code = [lon, lat], np.zeros(lat.shape, np.int64)
    for b in range(5 * precision):
        i = b % 2
        mid = (lo[i] + hi[i]) / 2
        bit = val[i] >= mid
        lo[i], hi[i] = np.where(bit, mid, lo[i]), np.where(bit, hi[i], mid)
        code = code * 2 + bit
    idx = np.stack([(code >> (5 * (precision - 1 - c))) & 31 for c in range(precision)], axis=-1)
    return np.ascontiguousarray(GEOHASH_BASE32[idx]).view(f"<U{precision}").reshape(lat.shape)


def xy_to_geohash(xy: np.ndarray) -> np.ndarray:
    lat = LAT0 + xy[:, 1] / 111.0
    return geohash(lat, LON0 + xy[:, 0] / (111.0 * np.cos(np.radians(LAT0))))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(24)
_GH_W = _GH_W / _GH_W.sum()


def expected_sigmoid(z: np.ndarray, sd: float) -> np.ndarray:
    """E[sigmoid(z + sd * e)], e ~ N(0, 1), by Gauss-Hermite quadrature (exact to ~1e-6)."""
    return sigmoid(z[..., None] + sd * _GH_X) @ _GH_W


def categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One draw per row of a (n, m) probability matrix."""
    c = np.cumsum(probs / probs.sum(1, keepdims=True), axis=1)
    return np.minimum((rng.random((len(probs), 1)) > c).sum(1), probs.shape[1] - 1)


def make_world(rng: np.random.Generator, n_users: int, n_pois: int, days: int) -> dict:
    """Static latents and the users / pois tables."""
    start = END - pd.Timedelta(days=days)
    cold_from = int(np.ceil(0.75 * days))
    res_centres = rng.uniform(-6, 6, (6, 2))
    biz_centres = rng.uniform(-3, 3, (3, 2))
    cat_centroid = rng.normal(0, 1, (len(CAT_NAMES), K))
    # --- users
    occ = rng.choice(3, n_users, p=[0.65, 0.15, 0.20])  # worker, student, other
    age_p = np.array([[0, .15, .45, .25, .12, .03], [.45, .55, 0, 0, 0, 0], [.03, .12, .2, .2, .2, .25]])
    age = categorical(rng, age_p[occ])
    home = res_centres[rng.integers(0, 6, n_users)] + rng.normal(0, 1.8, (n_users, 2))
    work = np.where((occ == 1)[:, None], home + rng.normal(0, 1.5, (n_users, 2)),
                    biz_centres[rng.integers(0, 3, n_users)] + rng.normal(0, 1.5, (n_users, 2)))
    U = rng.normal(0, 1, (n_users, K)) + 0.4 * rng.normal(0, 1, (6, K))[age]
    budget = 38 * np.array([0.6, 0.75, 1.1, 1.3, 1.2, 1.0])[age] * np.exp(rng.normal(0, 0.35, n_users))
    activity = np.exp(rng.normal(0, 1.0, n_users))
    u_cold = rng.random(n_users) < 0.10
    u_day = np.where(u_cold, rng.integers(cold_from, max(cold_from + 1, days - 1), n_users), 0)
    reg = np.where(u_cold, (start + pd.to_timedelta(u_day, "D")).asi8 // 10**9 - rng.integers(3600, 72000, n_users),
                   start.value // 10**9 - rng.integers(86400, 720 * 86400, n_users))
    users = pd.DataFrame({
        "user_id": [f"u{i:05d}" for i in range(n_users)],
        "age_group": np.where(rng.random(n_users) < 0.05, None,
                              np.array(["<18", "18-24", "25-34", "35-44", "45-54", "55+"])[age]),
        "gender": np.where(rng.random(n_users) < 0.06, None, rng.choice(["f", "m", "u"], n_users, p=[.48, .47, .05])),
        "home_geohash": np.where(rng.random(n_users) < 0.02, None, xy_to_geohash(home)),
        "registered_at": pd.to_datetime(reg, unit="s", utc=True)})
    # --- pois
    cat = rng.choice(len(CAT_NAMES), n_pois, p=SHARE / SHARE.sum())
    centres = np.vstack([res_centres, biz_centres, biz_centres])
    loc = centres[rng.integers(0, len(centres), n_pois)] + rng.normal(0, 1.5, (n_pois, 2))
    V = 0.5 * cat_centroid[cat] + 0.7 * rng.normal(0, 1, (n_pois, K))
    log_pop = -0.9 * np.log(rng.permutation(n_pois) + 1.0)
    log_pop = (log_pop - log_pop.mean()) / log_pop.std()
    trend = np.select([rng.random(n_pois) < 0.25, rng.random(n_pois) < 0.25], [rng.normal(1.2, 0.3, n_pois),
                      rng.normal(-1.2, 0.3, n_pois)], 0.0)
    quality = rng.normal(0, 1, n_pois)
    price = np.clip(BASE_PRICE[cat] * np.exp(rng.normal(0, 0.3, n_pois) + 0.12 * quality), 15, 120).round(1)
    rating = np.clip(4.3 + 0.35 * quality + rng.normal(0, 0.15, n_pois), 0, 5).round(1)
    rating = np.where(rng.random(n_pois) < 0.05, np.nan, rating)
    deliv = np.clip(PREP[cat] + 12 + 1.1 * np.hypot(*loc.T) + rng.normal(0, 4, n_pois), 10, 90).round().astype(int)
    p_cold = rng.random(n_pois) < 0.10
    p_day = np.where(p_cold, rng.integers(cold_from, max(cold_from + 1, days - 1), n_pois), 0)
    opened = np.where(p_cold, (start + pd.to_timedelta(p_day, "D")).asi8 // 10**9 - rng.integers(3600, 72000, n_pois),
                      start.value // 10**9 - rng.integers(30 * 86400, 1500 * 86400, n_pois))
    style_dirs = rng.normal(0, 1, (len(STYLE_WORDS), K)) / np.sqrt(K * 0.74)
    style_hit = (V @ style_dirs.T > 0.7) & (rng.random((n_pois, len(STYLE_WORDS))) < 0.75)
    style_hit |= rng.random((n_pois, len(STYLE_WORDS))) < 0.05
    adj = ["Golden", "Lucky", "Happy", "Red", "Little", "Old Town", "Jade", "Sunny", "Silver", "Midnight", "Corner", "Urban"]
    noun = ["Bowl", "Dragon", "Spoon", "Lantern", "Garden", "Table", "House", "Bistro", "Express", "Wok", "Plate"]
    first = ["Wang", "Li", "Zhang", "Chen", "Maria", "Tony", "Sam", "Lucy", "Kenji", "Mina", "Ahmed", "Rosa"]
    names, descs = [], []
    for j in range(n_pois):
        r = rng.random()
        names.append(f"{adj[rng.integers(len(adj))]} {noun[rng.integers(len(noun))]}" if r < 0.6 else
                     f"{first[rng.integers(len(first))]}'s {'Kitchen' if r < 0.8 else noun[rng.integers(len(noun))]}")
        dishes = CATEGORIES[CAT_NAMES[cat[j]]][6]
        pick = rng.choice(dishes, rng.integers(2, 5), replace=False)
        words = [w for w, h in zip(STYLE_WORDS, style_hit[j]) if h]
        descs.append((f"{', '.join(words).capitalize()} {CAT_NAMES[cat[j]]}. " if words else "")
                     + f"Serving {', '.join(pick[:-1])} and {pick[-1]}.")
    pois = pd.DataFrame({
        "poi_id": [f"p{j:04d}" for j in range(n_pois)], "name": names, "category": np.array(CAT_NAMES)[cat],
        "price": price, "rating": rating, "delivery_minutes": deliv, "geohash": xy_to_geohash(loc),
        "description": descs, "opened_at": pd.to_datetime(opened, unit="s", utc=True)})
    return dict(users=users, pois=pois, start=start, occ=occ, home=home, work=work, U=U,
                U_hat=U + rng.normal(0, 1.0, U.shape), budget=budget, activity=activity, u_day=u_day,
                cat=cat, loc=loc, V=V, log_pop=log_pop, trend=trend, quality=quality, log_price=np.log(price),
                deliv=deliv, p_day=p_day, centres=centres, cat_centroid=cat_centroid)


def day_weather(rng: np.random.Generator, start: pd.Timestamp, days: int) -> tuple[np.ndarray, np.ndarray]:
    """Daily weather (Markov chain) and daily mean temperature (climatology + AR(1) anomaly)."""
    trans = np.array([[.6, .2, .08, .08, .04], [.3, .4, .18, .06, .06], [.2, .35, .35, .05, .05],
                      [.45, .25, .1, .15, .05], [.3, .35, .1, .05, .2]])
    state, anom = np.zeros(days, int), np.zeros(days)
    for d in range(1, days):
        state[d] = rng.choice(5, p=trans[state[d - 1]])
        anom[d] = 0.7 * anom[d - 1] + rng.normal(0, 2.5)
    doy = (start + pd.to_timedelta(np.arange(days), "D")).dayofyear.to_numpy()
    t_mean = 12.5 - 16 * np.cos(2 * np.pi * (doy - 18) / 365) + anom - 2.0 * (state == 2)
    return state, t_mean


def scene(rng: np.random.Generator, w: dict, d: int, users: np.ndarray, wstate: np.ndarray,
          t_mean: np.ndarray, meal_shift: int = 0) -> dict:
    """Scene of n events of day d: timestamp, hour, location, location type, weather, temperature.
    ``meal_shift``: the hourly activity and the meal slots happen that many hours later."""
    n, day0 = len(users), w["start"] + pd.Timedelta(days=d)
    hour_w = np.roll(HOUR_W, meal_shift)
    hour = rng.choice(24, n, p=hour_w / hour_w.sum())
    ts = day0.value // 10**9 + hour * 3600 + rng.integers(0, 3600, n)
    holiday, weekend = day0.date() in HOLIDAYS, day0.dayofweek >= 5
    occ = w["occ"][users]
    if not (holiday or weekend):  # columns: home office school outdoor other
        p_day = np.array([[.05, .8, 0, .08, .07], [.05, 0, .8, .08, .07], [.75, 0, 0, .15, .1]])[occ]
    else:
        p_day = np.tile([.6, .02, 0, .25, .13], (n, 1))
    p_eve = np.tile([.85, .04, 0, .07, .04], (n, 1))
    lt = categorical(rng, np.where(((hour >= 9) & (hour < 18))[:, None], p_day, p_eve))
    xy = w["home"][users].copy()
    xy[(lt == 1) | (lt == 2)] = w["work"][users][(lt == 1) | (lt == 2)]
    out = lt == 3
    xy[out] += rng.normal(0, 2.5, (out.sum(), 2))
    oth = lt == 4
    xy[oth] = w["centres"][rng.integers(0, len(w["centres"]), oth.sum())] + rng.normal(0, 2, (oth.sum(), 2))
    temp = (t_mean[d] + 4.5 * np.cos(2 * np.pi * (hour - 15) / 24) + rng.normal(0, 0.5, n)).round(1)
    ws = WEATHER_STATES[wstate[d]]
    weather = "snowy" if ws == "precip" and t_mean[d] < 0.5 else ("rainy" if ws == "precip" else ws)
    meal_hour = (hour - meal_shift) % 24
    slot = np.select([(meal_hour >= 5) & (meal_hour < 10), (meal_hour >= 10) & (meal_hour < 14),
                      (meal_hour >= 14) & (meal_hour < 17), (meal_hour >= 17) & (meal_hour < 21)], [0, 1, 2, 3], 4)
    return dict(ts=ts, hour=hour, slot=slot, xy=xy, geohash=xy_to_geohash(xy), location_type=LOC_TYPES[lt],
                weather=np.full(n, weather), temperature_c=np.clip(temp, -40, 50), is_holiday=np.full(n, holiday),
                rain=weather == "rainy", snow=weather == "snowy", holiday=holiday, weekend=weekend)


def logits(w: dict, users: np.ndarray, sc: dict, t_frac: float, Hc: np.ndarray, Ho: np.ndarray,
           affinity_scale: float = 1.0) -> tuple:
    """Attraction logit z, order logit o and distance (km), each (n events, n pois), before hidden noise."""
    cat = w["cat"]
    aff = w["U"][users] @ w["V"].T / np.sqrt(K * 0.74)
    dist = np.hypot(*(sc["xy"][:, None, :] - w["loc"][None, :, :]).transpose(2, 0, 1))
    bad = 1.0 + 0.5 * sc["rain"] + 0.9 * sc["snow"]
    lp_std = (w["log_price"] - w["log_price"].mean()) / w["log_price"].std()
    rel_price = w["log_price"][None, :] - np.log(w["budget"][users])[:, None]
    temp = sc["temperature_c"][:, None]
    h_o, h_c = np.log1p(Ho[users]), np.log1p(Hc[users])
    z = (-1.8 + 0.65 * affinity_scale * aff + 0.55 * w["log_pop"] + w["trend"] * (t_frac - 0.5) + 0.3 * w["quality"]
         - 0.25 * dist * bad + 0.7 * SLOT_SUIT[cat][:, sc["slot"]].T
         + (0.6 * (sc["rain"] | sc["snow"]) * HOT[cat])
         + 0.05 * (temp - 8.0) * (COLD[cat] - 0.4 * HOT[cat])
         + (0.35 * sc["holiday"] + 0.2 * sc["weekend"]) * lp_std
         - 0.5 * np.maximum(rel_price, 0) + 0.9 * h_o + 0.3 * h_c)
    eta = w["deliv"][None, :] + 2.5 * dist * bad
    o = (-0.9 + 0.5 * w["quality"] - 1.3 * np.maximum(rel_price, 0) + 0.3 * np.maximum(-rel_price, 0)
         - 0.035 * (eta - 35) + 0.7 * h_o + 0.15 * h_c + 0.2 * sc["holiday"])
    return z, o, dist


def generate_alt_batch(out_dir: Path, seed: int = 0, n_users: int = 1500, n_pois: int = 400,
                       n_requests: int = 15000, impressions_per_request: int = 10,
                       days: int = 60, meal_shift: int = 0, affinity_scale: float = 1.0) -> dict[str, int]:
    """Simulate the world and write pois, users, behaviors, impressions and truth/impressions as Parquet."""
    rng = np.random.default_rng(seed)
    w = make_world(rng, n_users, n_pois, days)
    wstate, t_mean = day_weather(rng, w["start"], days)
    Hc, Ho = np.zeros((n_users, n_pois)), np.zeros((n_users, n_pois))
    day_w = np.array([w["activity"][w["u_day"] <= d].sum() * (1.15 if (w["start"] + pd.Timedelta(days=d)).dayofweek >= 5
                      else 1.0) for d in range(days)])
    req_per_day = rng.multinomial(n_requests, day_w / day_w.sum())
    sess_per_day = rng.poisson(0.15 * n_users * days * day_w / day_w.sum())
    k = impressions_per_request
    exam = 1.0 / (1.0 + np.arange(k)) ** 0.7
    imp_parts, beh_parts, n_req = [], [], 0
    scene_cols = ["geohash", "location_type", "weather", "temperature_c", "is_holiday"]
    for d in range(days):
        elig_u = np.flatnonzero(w["u_day"] <= d)
        p_u = w["activity"][elig_u] / w["activity"][elig_u].sum()
        closed = w["p_day"] > d
        nr, ns = req_per_day[d], sess_per_day[d]
        users = rng.choice(elig_u, nr + ns, p=p_u)
        sc = scene(rng, w, d, users, wstate, t_mean, meal_shift)
        z, o, dist = logits(w, users, sc, (d + 0.5) / days, Hc, Ho, affinity_scale)
        z[:, closed] = -np.inf
        # --- page views from the legacy ranker (stale popularity, noisy user factors, distance)
        r = slice(0, nr)
        rank_score = (0.8 * w["log_pop"] + 0.6 * (w["U_hat"][users[r]] @ w["V"].T) / np.sqrt(K * 1.48)
                      - 0.15 * dist[r] + 0.2 * w["quality"] + rng.gumbel(0, 1.3, (nr, n_pois)))
        rank_score[:, closed] = -np.inf
        top = np.argsort(-rank_score, axis=1)[:, :k]
        rows = np.repeat(np.arange(nr), k)
        zi, oi = z[rows, top.ravel()], o[rows, top.ravel()]
        ex = np.tile(exam, nr)
        p_click = ex * expected_sigmoid(zi, NOISE_CLICK)
        p_order = p_click * expected_sigmoid(oi, NOISE_ORDER)
        click = rng.random(nr * k) < ex * sigmoid(zi + rng.normal(0, NOISE_CLICK, nr * k))
        order = click & (rng.random(nr * k) < sigmoid(oi + rng.normal(0, NOISE_ORDER, nr * k)))
        imp = pd.DataFrame({"request_id": np.char.add("r", np.char.zfill((n_req + rows).astype(str), 6)),
                            "ts": sc["ts"][rows], "user": users[rows], "poi": top.ravel(),
                            "position": np.tile(np.arange(k), nr), **{c: sc[c][rows] for c in scene_cols},
                            "click": click.astype(int), "order": order.astype(int),
                            "p_click": p_click, "p_order": p_order})
        n_req += nr
        imp_parts.append(imp)
        ic = imp[imp.click == 1]
        for beh, lag, sub in (("click", 2, ic), ("order", 15, ic[ic.order == 1])):
            b = sub[["ts", "user", "poi", *scene_cols]].copy()
            b["ts"] = b["ts"] + lag + rng.integers(0, 10 if beh == "click" else 30, len(b))
            b["behavior"] = beh
            beh_parts.append(b)
        # --- browsing sessions: optional search, then views -> clicks -> favourites / orders
        s = slice(nr, nr + ns)
        su, zs, os_ = users[s], z[s], o[s]
        searched = rng.random(ns) < 0.3
        cat_score = (w["U"][su] @ w["cat_centroid"].T) / np.sqrt(K) + 0.7 * SLOT_SUIT[:, sc["slot"][s]].T
        qcat = categorical(rng, np.exp(1.5 * cat_score))
        bonus = 2.5 * (searched[:, None] & (w["cat"][None, :] == qcat[:, None]))
        vmax = 12
        views = np.argsort(-(zs + bonus + rng.gumbel(0, 1.0, zs.shape)), axis=1)[:, :vmax]
        n_views = np.minimum(1 + rng.poisson(5, ns), vmax)
        srow, vk = np.nonzero(np.arange(vmax)[None, :] < n_views[:, None])
        vp = views[srow, vk]
        vz, vo = zs[srow, vp], os_[srow, vp]
        vclick = rng.random(len(vp)) < sigmoid(vz - 0.3 + rng.normal(0, NOISE_CLICK, len(vp)))
        vorder = vclick & (rng.random(len(vp)) < sigmoid(vo + rng.normal(0, NOISE_ORDER, len(vp))))
        vfav = vclick & (rng.random(len(vp)) < 0.12 * sigmoid(vz + 2))
        sts = sc["ts"][s]
        vts = sts[srow] + 5 + vk * 35 + rng.integers(0, 30, len(vp))  # views of a session every ~35 s
        sscene = {c: sc[c][s] for c in scene_cols}
        for beh, mask, off in (("view", np.ones(len(vp), bool), 0), ("click", vclick, 3), ("favorite", vfav, 10),
                               ("order", vorder, 30)):
            b = pd.DataFrame({"ts": vts[mask] + off + rng.integers(0, 8 if off < 30 else 150, mask.sum()),
                              "user": su[srow[mask]], "poi": vp[mask], "behavior": beh,
                              **{c: v[srow[mask]] for c, v in sscene.items()}})
            beh_parts.append(b)
        qs = np.flatnonzero(searched)
        queries = []
        for i in qs:
            name = CAT_NAMES[qcat[i]]
            dish = CATEGORIES[name][6][rng.integers(4)]
            queries.append([name, dish, f"{dish} near me", f"cheap {name}", f"best {name}"][rng.integers(5)])
        beh_parts.append(pd.DataFrame({"ts": sts[qs], "user": su[qs], "poi": -1, "behavior": "search",
                                       "query": queries, **{c: v[qs] for c, v in sscene.items()}}))
        # --- habit: decayed counts of clicks and orders, visible from the next day on
        Hc *= 0.97
        Ho *= 0.97
        np.add.at(Hc, (imp.user[imp.click == 1].to_numpy(), imp.poi[imp.click == 1].to_numpy()), 1.0)
        np.add.at(Ho, (imp.user[imp.order == 1].to_numpy(), imp.poi[imp.order == 1].to_numpy()), 1.0)
        np.add.at(Hc, (su[srow[vclick]], vp[vclick]), 1.0)
        np.add.at(Ho, (su[srow[vorder]], vp[vorder]), 1.0)
    return write_batch(Path(out_dir), w, pd.concat(imp_parts, ignore_index=True), pd.concat(beh_parts, ignore_index=True))


def write_batch(out: Path, w: dict, imp: pd.DataFrame, beh: pd.DataFrame) -> dict[str, int]:
    """Map indices to ids, timestamps to UTC datetimes, and write the five Parquet files."""
    uid, pid = w["users"]["user_id"].to_numpy(), w["pois"]["poi_id"].to_numpy()
    last = END.value // 10**9 - 1
    scene_cols = ["geohash", "location_type", "weather", "temperature_c", "is_holiday"]

    def common(df: pd.DataFrame) -> pd.DataFrame:
        df = df.sort_values("ts", kind="stable")
        df["ts"] = pd.to_datetime(np.minimum(df["ts"].to_numpy(), last), unit="s", utc=True)
        df["user_id"] = uid[df["user"].to_numpy()]
        poi = df["poi"].to_numpy()
        df["poi_id"] = np.where(poi >= 0, pid[np.maximum(poi, 0)], None)
        df["is_holiday"] = df["is_holiday"].astype(bool)
        return df

    imp, beh = common(imp), common(beh)
    if "query" not in beh:
        beh["query"] = None
    beh["query"] = beh["query"].where(beh["behavior"] == "search", None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(exist_ok=True)
    tables = {
        "pois": w["pois"], "users": w["users"],
        "behaviors": beh[["ts", "user_id", "poi_id", "behavior", "query", *scene_cols]].reset_index(drop=True),
        "impressions": imp[["request_id", "ts", "user_id", "poi_id", "position", *scene_cols, "click", "order"]]
        .reset_index(drop=True)}
    for name, df in tables.items():
        df.to_parquet(out / f"{name}.parquet", index=False)
    imp[["request_id", "poi_id", "p_click", "p_order"]].to_parquet(out / "truth" / "impressions.parquet", index=False)
    return {name: len(df) for name, df in tables.items()} | {"truth": len(imp)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-users", type=int, default=1500)
    ap.add_argument("--n-pois", type=int, default=400)
    ap.add_argument("--n-requests", type=int, default=15000)
    ap.add_argument("--impressions-per-request", type=int, default=10)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--meal-shift", type=int, default=0, help="hours later that activity and meal slots happen")
    ap.add_argument("--affinity-scale", type=float, default=1.0, help="weight of the user x PoI affinity in the click logit")
    a = ap.parse_args()
    t0 = time.perf_counter()
    counts = generate_alt_batch(a.out, a.seed, a.n_users, a.n_pois, a.n_requests, a.impressions_per_request, a.days,
                                a.meal_shift, a.affinity_scale)
    secs = time.perf_counter() - t0
    from sklearn.metrics import roc_auc_score
    imp = pd.read_parquet(a.out / "impressions.parquet")
    truth = pd.read_parquet(a.out / "truth" / "impressions.parquet")
    print(f"rows: {counts}  ({secs:.1f} s)")
    print(f"CTR {imp['click'].mean():.4f}  CVR (orders/clicks) {imp['order'].sum() / max(imp['click'].sum(), 1):.4f}  "
          f"mean p_click {truth['p_click'].mean():.4f}")
    print(f"oracle AUC click {roc_auc_score(imp['click'], truth['p_click']):.4f}  "
          f"order {roc_auc_score(imp['order'], truth['p_order']):.4f}")


if __name__ == "__main__":
    main()
