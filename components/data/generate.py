"""Synthetic food-delivery world in the raw data contract: PoIs, users, behaviour logs, impressions.

The point of the generator is that the signals the papers exploit are *true* in the data, so a
model that reads them can beat one that does not, and the oracle in ``truth/`` says by how much.

Generative model (all latent quantities stay inside; only contract columns are written)
--------------------------------------------------------------------------------------
World.  Three cities (a cold northern one, a mild central one, a warm southern one), each with a
few districts; every location is a point near a district centre and is written as a geohash.
Time is UTC and local time is taken to be UTC, so the hour of ``ts`` is the local hour.
* Weather: per city, a Markov chain over 6-hour blocks (persistent; the climate's mix of
  sunny/cloudy/rainy/windy/foggy; rain turns to snow below ~1 °C).
* Temperature: per city and hour = seasonal mean + an AR(1) daily anomaly (cold fronts make
  day-to-day *changes*) + a diurnal cycle (peak 15:00, damped by clouds/rain) + a weather offset.
* Holidays: a fixed month-day calendar (``HOLIDAYS``); a holiday falling on a weekend is not one.

PoIs.  Spread over the cities by their share and, within a city, over ~27 categories in
proportion (stratified, so small worlds keep the mix).  A category (``CATEGORIES``) has a taste profile over
``TASTE_DIMS`` = warm(+)↔cold(−), spicy, heavy(+)↔light(−), sweet, snack(+)↔full meal(−), a base
price, a delivery time and a suitability per meal slot (breakfast … late night).  A PoI's taste =
its category's profile + noise; its price, rating (from a latent quality) and delivery minutes follow
category and quality; a latent popularity and a 4-d collaborative factor are never written.  Name and
description *say* the PoI's own attributes in words, drawn at random from synonym lists (spicy:
fiery/chili/numbing/mala …, cold: iced/chilled/frozen …, light: fresh/steamed/healthy …), plus
dishes of its category, so a cold-start PoI can be understood from text alone.  Cold PoIs open
after ``cold_start_after`` of the range; nothing is shown or logged for a PoI before it opened.

Users.  City, home (and office/school) location, occupation (worker/student/homebody, from age),
a latent taste vector (age, gender and city shift it a bit), a preferred price level, a price
sensitivity, a 4-d collaborative factor and a heavy-tailed (log-normal) activity.  Cold users
register after ``cold_start_after`` of the range.

Scene of an event.  A log row keeps the scene of its session (or impression), even when an order
lands minutes later.  The event time follows meal-time peaks; from the hour come the meal slot and, with the
weekday/holiday and the user's occupation, the location type (office on weekday daytime, home in the
evening, outdoor/other more often on days off); the geohash is near home, office or a district
accordingly; weather and temperature are the city's at that hour.  The scene shifts what is wanted:
cold, a temperature drop, rain or snow → warm and heavy; heat → cold, sweet, snacks; breakfast →
light, cheap; office lunch → light and cheap (more price sensitive); afternoon → sweet snacks and
drinks; late night → spicy and heavy; weekend/holiday → pricier and heavier.

Utility.  ``U(user, poi, scene) = (θ_user + Δθ_scene)·(w ⊙ taste_poi) + log suitability(slot, cat)
− λ_user,scene · price mismatch + quality + popularity + collab factor dot − distance − delivery``.
With ``popularity_drift`` > 0 (0 here) a PoI's popularity also moves linearly over the log: shops rise
and fade in real logs (a new chef, a run of reviews, a rival opening next door), so counts since the
first day lag them; a PoI's change from the first to the last day is N(0, popularity_drift).
* Impressions (``n_requests`` page views × ``impressions_per_request``): candidates are a mix of
  PoIs a legacy recommender finds relevant (Gumbel top-k on U/2) and random open PoIs of the city,
  ordered by a noisy score.  ``P(click) = σ(a·U + b − position_bias·position + ε)`` with
  ``ε ~ N(0, hidden_noise_std)`` drawn per impression and written nowhere (why the oracle AUC is a
  ceiling); ``P(order | click) = σ(price fit, quality, taste match, noise)``.  The biases are
  calibrated so that the mean CTR is ``ctr`` and the order rate among clicks is ``cvr``.
  ``truth/impressions.parquet`` holds P(click) and P(click and order).
* Behaviour log: sessions over the whole range (after registration), a Poisson number per user in
  proportion to activity × time registered; each session has its own scene, maybe a search whose
  query says the wanted taste/category/price in words, views = Gumbel top-k of U (a softmax choice),
  clicks, favourites and orders from the same model.  Every click/order of an impression is also
  in the log seconds after the impression, with the same scene — features must be point-in-time.

A user chooses among the PoIs of their own city (all PoIs only in worlds too small to fill a page).
Everything is vectorised numpy over chunks of events × PoIs (bounded memory) and deterministic by
seed: same seed and config → identical files.  The world's coefficients are module constants below;
the knobs a user may want (sizes, cold start, noise, position bias, CTR, CVR, written scales, and how much
each part of the utility weighs: ``*_effect``, all 1 here) are in ``GenerateConfig``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import GenerateConfig
from components.data.contract import (
    AGE_GROUPS,
    BEHAVIORS,
    CONTRACT,
    GENDERS,
    LOCATION_TYPES,
    TABLES,
    TRUTH_COLUMNS,
    WEATHERS,
)

# --------------------------------------------------------------------------------------------
# The world's fixed vocabulary and physics
# --------------------------------------------------------------------------------------------
TASTE_DIMS = ("warm", "spicy", "heavy", "sweet", "snack")
TASTE_WEIGHT = np.array([1.0, 0.8, 0.8, 0.7, 0.8], dtype=np.float32)
SLOTS = ("breakfast", "lunch", "afternoon", "dinner", "late_night")
# Meal slot of each hour 0..23, with the same start hours as the features section (5, 10, 14, 17, 21).
SLOT_OF_HOUR = np.array([4] * 5 + [0] * 5 + [1] * 4 + [2] * 3 + [3] * 4 + [4] * 3)


@dataclass(frozen=True)
class Category:
    name: str
    taste: tuple  # TASTE_DIMS
    price: float  # typical average order value
    delivery: int  # typical minutes
    slots: tuple  # suitability per SLOTS, 0..1
    weight: float  # share of PoIs
    nouns: tuple  # shop-name endings
    terms: tuple  # what people type when they want it
    dishes: tuple


C = Category
CATEGORIES = (
    C("noodles", (.7, .3, .3, 0, -.4), 28, 28, (.3, 1, .2, .8, .6), 1.4, ("Noodle House", "Noodle Bar", "Mian Guan"),
      ("noodles", "noodle soup", "lamian"), ("beef noodle soup", "dan dan noodles", "zhajiang noodles", "wonton noodles", "hand-pulled noodles", "scallion oil noodles")),
    C("hot pot", (1, .8, .8, 0, -1), 110, 45, (0, .4, .1, 1, .7), 0.9, ("Hot Pot", "Hotpot House", "Broth Bar"),
      ("hot pot", "hotpot", "shabu shabu"), ("beef tallow broth", "tomato broth", "hand-cut lamb", "beef tripe", "tofu skin", "shrimp paste")),
    C("coffee & tea", (.1, 0, -.6, .4, .9), 30, 20, (1, .4, .9, .15, .05), 1.3, ("Coffee", "Cafe", "Roasters", "Tea Room"),
      ("coffee", "latte", "tea", "cafe"), ("latte", "americano", "flat white", "jasmine tea", "matcha latte", "cold brew")),
    C("salad", (-.8, 0, -1, .1, -.3), 38, 22, (.2, 1, .4, .5, .05), 0.8, ("Salad Bar", "Greens", "Salad Co."),
      ("salad", "greens", "healthy bowl"), ("caesar salad", "quinoa bowl", "chicken breast salad", "avocado salad", "greek salad")),
    C("ice cream & desserts", (-1, 0, .2, 1, 1), 32, 22, (.02, .2, 1, .4, .5), 0.9, ("Dessert House", "Gelato", "Sweets"),
      ("dessert", "ice cream", "gelato", "cake"), ("mango sago", "gelato", "cheesecake", "tiramisu", "shaved ice", "red bean ice")),
    C("bbq skewers", (.6, .7, .9, 0, .3), 75, 35, (0, .1, .1, .7, 1), 1.0, ("BBQ", "Skewers", "Grill"),
      ("bbq", "skewers", "chuanr", "grill"), ("lamb skewers", "grilled chicken wings", "grilled squid", "cumin beef", "grilled eggplant", "roasted oysters")),
    C("congee", (.9, 0, -.5, .1, -.2), 22, 25, (1, .4, .1, .4, .5), 0.7, ("Congee", "Porridge House", "Zhou Pu"),
      ("congee", "porridge", "rice porridge"), ("century egg congee", "millet congee", "fish congee", "pumpkin congee", "youtiao", "steamed buns")),
    C("sushi", (-.6, .1, -.4, .1, -.2), 85, 30, (0, .8, .3, .9, .2), 0.7, ("Sushi", "Sushi Bar", "Izakaya"),
      ("sushi", "sashimi", "japanese"), ("salmon nigiri", "california roll", "tuna sashimi", "eel rice", "miso soup")),
    C("bubble tea", (-.5, 0, 0, 1, 1), 22, 20, (.05, .4, 1, .4, .4), 1.2, ("Tea", "Boba", "Milk Tea"),
      ("bubble tea", "boba", "milk tea"), ("brown sugar boba", "taro milk tea", "cheese foam tea", "mango slush", "jasmine milk tea")),
    C("burgers", (.4, .1, .9, .1, -.2), 40, 28, (.2, .9, .4, .8, .6), 1.0, ("Burgers", "Burger Joint", "Grill House"),
      ("burger", "burgers", "fast food"), ("cheeseburger", "double beef burger", "crispy chicken burger", "fries", "onion rings")),
    C("bakery", (.1, 0, .3, .7, .6), 25, 22, (1, .3, .7, .15, .05), 0.8, ("Bakery", "Bread Co.", "Patisserie"),
      ("bakery", "bread", "pastry"), ("croissant", "egg tart", "sourdough", "cinnamon roll", "milk bread")),
    C("sichuan", (.7, 1, .6, 0, -1), 62, 35, (0, .9, .05, 1, .4), 1.0, ("Sichuan Kitchen", "Chuan Cai", "Sichuan House"),
      ("sichuan", "chuan cai", "sichuan food"), ("mapo tofu", "kung pao chicken", "boiled fish in chili oil", "twice-cooked pork", "spicy diced rabbit")),
    C("dumplings", (.8, .1, .3, 0, -.5), 28, 28, (.6, .9, .1, .8, .5), 1.0, ("Dumplings", "Jiaozi House", "Dumpling Bar"),
      ("dumplings", "jiaozi", "wontons"), ("pork & chive dumplings", "soup dumplings", "shrimp wontons", "pan-fried dumplings")),
    C("fried chicken", (.5, .4, 1, .1, .3), 45, 30, (0, .5, .5, .7, 1), 1.0, ("Fried Chicken", "Chicken", "Wings"),
      ("fried chicken", "wings", "chicken"), ("crispy fried chicken", "spicy wings", "popcorn chicken", "chicken tenders", "korean fried chicken")),
    C("pizza", (.5, .1, .8, .1, -.3), 72, 35, (0, .6, .3, .9, .6), 0.7, ("Pizza", "Pizzeria", "Pizza Co."),
      ("pizza", "pizzeria"), ("margherita", "pepperoni pizza", "durian pizza", "garlic bread", "baked wings")),
    C("poke bowls", (-.4, .1, -.7, .1, -.5), 48, 25, (.1, 1, .3, .6, .05), 0.5, ("Poke", "Bowls", "Poke Bar"),
      ("poke", "poke bowl", "bowl"), ("salmon poke", "tuna poke", "tofu bowl", "brown rice bowl")),
    C("cold noodles", (-.8, .6, -.2, 0, -.3), 24, 25, (.1, 1, .4, .6, .3), 0.6, ("Liangpi", "Cold Noodle Bar", "Noodle Stand"),
      ("cold noodles", "liangpi", "chilled noodles"), ("liangpi", "sesame cold noodles", "chilled buckwheat noodles", "cucumber salad")),
    C("crayfish", (.6, .9, .7, 0, .2), 128, 40, (0, .1, .1, .8, 1), 0.5, ("Crayfish", "Xiaolongxia", "Seafood Shack"),
      ("crayfish", "xiaolongxia", "seafood"), ("spicy crayfish", "garlic crayfish", "thirteen-spice crayfish", "crab legs")),
    C("korean bbq", (.6, .5, .7, .1, -.6), 88, 38, (0, .5, .05, 1, .5), 0.5, ("Korean BBQ", "Seoul Grill", "K-Kitchen"),
      ("korean bbq", "korean", "bibimbap"), ("marinated short rib", "pork belly", "kimchi stew", "bibimbap")),
    C("dim sum", (.6, 0, 0, .2, 0), 58, 32, (.8, .8, .6, .5, .1), 0.7, ("Dim Sum", "Tea House", "Cantonese Kitchen"),
      ("dim sum", "cantonese", "yum cha"), ("har gow", "siu mai", "char siu bao", "rice noodle rolls", "egg tarts")),
    C("fruit & juice", (-.9, 0, -1, .7, .8), 30, 20, (.4, .5, .9, .3, .3), 0.7, ("Juice Bar", "Fruit Shop", "Smoothies"),
      ("juice", "fruit", "smoothie"), ("fruit platter", "watermelon juice", "mango smoothie", "orange juice", "coconut water")),
    C("rice bento", (.5, .1, .2, 0, -.8), 25, 25, (.1, 1, .1, .7, .2), 1.3, ("Bento", "Rice Bowl", "Kuaican"),
      ("rice", "bento", "rice bowl", "set meal"), ("braised pork rice", "chicken teriyaki rice", "tomato egg rice", "curry rice")),
    C("malatang", (.8, .8, .2, 0, -.4), 30, 28, (0, .9, .2, .9, .7), 0.9, ("Malatang", "Spicy Pot", "Mala House"),
      ("malatang", "mala tang", "spicy pot"), ("mala tang", "spicy dry pot", "fish balls", "lotus root", "glass noodles")),
    C("ramen", (.9, .2, .7, 0, -.7), 52, 32, (0, .9, .1, .9, .6), 0.6, ("Ramen", "Ramen-ya", "Noodle Lab"),
      ("ramen", "japanese noodles"), ("tonkotsu ramen", "miso ramen", "chashu", "gyoza")),
    C("steak & western", (.5, 0, .8, .1, -.7), 150, 40, (0, .4, .1, 1, .2), 0.4, ("Steakhouse", "Bistro", "Grill Room"),
      ("steak", "western", "pasta"), ("ribeye steak", "pasta carbonara", "mushroom soup", "lamb chops")),
    C("vegetarian", (.2, 0, -.8, .1, -.4), 40, 28, (.3, 1, .2, .7, .1), 0.5, ("Vegetarian Kitchen", "Veggie House", "Su Shi"),
      ("vegetarian", "vegan", "veggie"), ("mock meat", "stir-fried greens", "tofu pot", "mushroom rice")),
    C("breakfast buns", (.6, 0, .1, .1, .2), 15, 18, (1, .2, .1, .05, .05), 0.8, ("Breakfast", "Bun Shop", "Baozi"),
      ("breakfast", "baozi", "jianbing", "buns"), ("jianbing", "baozi", "soy milk", "tea eggs", "shaomai")),
)
del C
CAT_TASTE = np.array([c.taste for c in CATEGORIES], dtype=np.float32)
CAT_PRICE = np.array([c.price for c in CATEGORIES])
CAT_DELIVERY = np.array([c.delivery for c in CATEGORIES])
CAT_WEIGHT = np.array([c.weight for c in CATEGORIES]) / sum(c.weight for c in CATEGORIES)
# log suitability of a category for a meal slot; the floor keeps every choice possible.
CAT_SLOT_TERM = np.log(np.array([c.slots for c in CATEGORIES]) + 0.05).astype(np.float32)

# Words that express attributes: (negative side, positive side) per taste dimension.
WORDS = {
    "warm": (("iced", "chilled", "frozen", "cool", "refreshing", "ice-cold"),
             ("hot", "warm", "steaming", "piping hot", "simmered", "toasty")),
    "spicy": (("mild", "non-spicy", "gentle"),
              ("spicy", "fiery", "chili", "numbing", "mala", "peppery")),
    "heavy": (("fresh", "light", "healthy", "steamed", "clean", "low-fat"),
              ("hearty", "rich", "fried", "loaded", "indulgent", "crispy", "creamy")),
    "sweet": (("savory", "salty", "umami"),
              ("sweet", "sugary", "honey", "caramel", "candied")),
    "snack": (("full meal", "set meal", "combo", "family-style"),
              ("snack", "quick bite", "treat", "to-go")),
}
CHEAP_WORDS = ("cheap", "budget", "affordable", "value")
CHEAP_PHRASES = ("Budget prices.", "Affordable.", "Great value.", "Cheap eats.")
PRICEY_WORDS = ("premium", "deluxe", "gourmet", "upscale")
SNACK_PHRASES = ("Perfect as a snack.", "A quick bite on the go.", "A little treat.", "Easy to-go.")
MEAL_PHRASES = ("Set meals available.", "Combos available.", "Full meals.", "Family-style portions.")
MEAL_WORDS = ("breakfast", "lunch", "afternoon tea", "dinner", "late night snack")
BRANDS = ("Golden Dragon", "Lucky", "Auntie Wang's", "Panda", "Red Lantern", "Happy", "Little Sheep",
          "Blue Whale", "Old Street", "Sunny", "Bamboo", "Jade", "Harbor", "Maple", "Lotus", "Tiger",
          "Uncle Li's", "Moonlight", "Corner", "Peach Blossom", "Silk Road", "Grandma's", "Urban",
          "Orchid", "Phoenix", "Happy Family", "Morning Star", "East Gate", "River", "Cloud Nine",
          "Hometown", "Twin Fish", "Lao Zhang", "Green Leaf", "Sakura", "Copper Pot", "Night Owl",
          "Five Spice", "Sesame", "Pearl")

# Cities: centre, seasonal temperature (annual mean, amplitude), diurnal amplitude, weather mix over
# (sunny, cloudy, rain-or-snow, windy, foggy), price level, taste shift over TASTE_DIMS.
CITIES = (
    dict(lat=39.91, lon=116.40, t_mean=12.5, t_amp=15.5, diurnal=5.0, mix=(.45, .25, .08, .14, .08),
         price=1.0, taste=(.25, 0, .25, 0, 0), share=.40),
    dict(lat=30.66, lon=104.07, t_mean=16.5, t_amp=10.5, diurnal=3.5, mix=(.22, .38, .24, .05, .11),
         price=.9, taste=(.1, .35, .1, 0, 0), share=.35),
    dict(lat=18.25, lon=109.51, t_mean=25.5, t_amp=4.0, diurnal=4.0, mix=(.42, .28, .22, .06, .02),
         price=1.05, taste=(-.2, -.15, -.1, .25, .1), share=.25),
)
N_DISTRICTS = 4
WEATHER_OF_MIX = np.array([WEATHERS.index(w) for w in ("sunny", "cloudy", "rainy", "windy", "foggy")])
SNOWY, RAINY = WEATHERS.index("snowy"), WEATHERS.index("rainy")
# Weather effects, by WEATHERS order: temperature offset, diurnal damping, taste shift (warm, heavy).
WEATHER_TEMP = np.array([1.0, -0.5, -2.0, -3.0, -1.0, -0.5])
WEATHER_DIURNAL = np.array([1.0, 0.6, 0.4, 0.4, 0.8, 0.5])
WEATHER_WARM = np.array([-0.1, 0.0, 0.4, 0.6, 0.2, 0.1], dtype=np.float32)
WEATHER_HEAVY = np.array([-0.05, 0.0, 0.25, 0.35, 0.1, 0.0], dtype=np.float32)
WEATHER_STAY = 0.7  # chance a 6-hour block keeps the previous block's weather

# Holidays as (month, day); a date on a weekend is a weekend, not a holiday.
HOLIDAYS = frozenset({(1, 1), (1, 2), (2, 16), (2, 17), (2, 18), (2, 19), (2, 20), (4, 6), (5, 1), (5, 4),
                      (5, 5), (6, 19), (9, 25), (10, 1), (10, 2), (10, 5), (10, 6), (10, 7), (12, 31)})

# When people order: meal-time peaks (hour centre, spread, weight).
HOUR_PEAKS = np.array([[8.0, 0.9, .12], [12.2, 0.8, .32], [15.5, 1.1, .12], [18.7, 1.0, .30], [22.5, 1.4, .14]])

OCCUPATIONS = ("worker", "student", "homebody")
# P(location type | occupation, day type, slot) over LOCATION_TYPES (home, office, school, outdoor, other).
_WORKDAY = {  # per slot: breakfast, lunch, afternoon, dinner, late night
    "worker": [(.55, .25, 0, .15, .05), (.05, .75, 0, .12, .08), (.05, .75, 0, .10, .10),
               (.60, .20, 0, .10, .10), (.85, .05, 0, .05, .05)],
    "student": [(.50, 0, .40, .10, 0), (.10, 0, .75, .10, .05), (.10, 0, .70, .15, .05),
                (.55, 0, .25, .10, .10), (.85, 0, 0, .05, .10)],
    "homebody": [(.80, 0, 0, .10, .10), (.75, 0, 0, .12, .13), (.70, 0, 0, .15, .15),
                 (.80, 0, 0, .08, .12), (.90, 0, 0, .05, .05)],
}
_DAY_OFF = [(.85, 0, 0, .10, .05), (.50, .03, 0, .25, .22), (.45, .03, 0, .30, .22),
            (.55, 0, 0, .20, .25), (.85, 0, 0, .10, .05)]


def _location_table() -> np.ndarray:
    """[occupation, day type (0 workday, 1 weekend, 2 holiday), slot, location] probabilities."""
    t = np.zeros((3, 3, 5, 5))
    for o, occ in enumerate(OCCUPATIONS):
        t[o, 0] = _WORKDAY[occ]
        t[o, 1] = _DAY_OFF
        t[o, 2] = np.array(_DAY_OFF) * np.array([0.7, 1, 1, 1.3, 1.3])  # holidays: out and about more
    t[1:, 1:, :, 1] = 0  # only workers go to an office on a day off
    return t / t.sum(-1, keepdims=True)


LOCATION_TABLE = _location_table()

# How the scene shifts what is wanted: taste (over TASTE_DIMS) and log price, per slot / location / day type.
SLOT_SHIFT = np.array([[0, -.2, -.6, 0, .3],  # breakfast: light, a bit snacky
                       [0, 0, -.1, 0, -.5],  # lunch: a meal
                       [0, 0, -.2, .5, .9],  # afternoon: sweet snacks and drinks
                       [0, .1, .3, 0, -.5],  # dinner: heavier meals
                       [0, .5, .5, 0, .1]], dtype=np.float32)  # late night: spicy and heavy
LOCATION_SHIFT = np.array([[0, 0, .2, 0, 0],  # home
                           [0, -.2, -.4, 0, -.1],  # office: light
                           [0, .1, 0, .3, .2],  # school: sweet snacks
                           [-.1, 0, 0, .1, .3],  # outdoor: on the go
                           [0, .1, .1, 0, 0]], dtype=np.float32)  # other
DAYTYPE_SHIFT = np.array([[0, 0, 0, 0, 0], [0, .1, .2, 0, 0], [.1, .1, .3, .1, -.2]], dtype=np.float32)
SLOT_PRICE = np.array([-.35, 0, -.1, .1, .05])  # breakfast is cheap
LOCATION_PRICE = np.array([0, -.15, -.35, 0, .05])  # office and school: cheaper
DAYTYPE_PRICE = np.array([0, .15, .35])  # weekends and holidays: pricier
DAYTYPE_PRICE_SENSITIVITY = np.array([1.0, 0.9, 0.7])

# Utility coefficients (the model's "physics"; documented in the module docstring).
K_COLLAB = 4
QUALITY_W = 0.45
COLLAB_W = 0.35
DIST_W = 0.25  # per km
DELIVERY_W = 0.015  # per minute over 30
CLICK_SCALE = 0.55  # a in sigma(a*U + b ...)
RELEVANT_SHARE = 0.6  # share of impression candidates a legacy recommender picked
SESSION_CLICK_BOOST = 1.0  # browsing with intent: clicks more likely than on a feed
SESSION_ORDER_BOOST = 0.4
FAVORITE_RATE = 0.07
SEARCH_RATE = 0.25
MEAN_VIEWS = 4.0  # views per session = 1 + Poisson(MEAN_VIEWS - 1)
BEHAVIORS_PER_SESSION = 6.15  # measured mean log rows per session, to size the logs
EVENT_PRECISION, POI_PRECISION, HOME_PRECISION = 6, 7, 6
CHUNK_CELLS = 2_000_000  # events x PoIs per utility chunk: bounds memory
END_MARGIN_S = 3600  # sessions/requests start at least this long before the end of the range

_B32 = np.frombuffer(b"0123456789bcdefghjkmnpqrstuvwxyz", dtype=np.uint8)
KM_PER_DEG = 111.2


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def geohash_encode(lat: np.ndarray, lon: np.ndarray, precision: int) -> np.ndarray:
    """Vectorised geohash (base32, ``precision`` characters) of lat/lon arrays, as an object array."""
    code = _geohash_code(lat, lon, precision)
    uniq, inv = np.unique(code, return_inverse=True)
    chars = np.stack([(uniq >> (5 * (precision - 1 - j))) & 31 for j in range(precision)], axis=1)
    text = np.ascontiguousarray(_B32[chars]).view(f"S{precision}").ravel().astype(str).astype(object)
    return text[inv.ravel()]


def _geohash_code(lat, lon, precision: int) -> np.ndarray:
    nbits = 5 * precision
    lon_bits, lat_bits = (nbits + 1) // 2, nbits // 2
    lon_i = np.clip(np.floor((np.asarray(lon, float) + 180) / 360 * 2**lon_bits), 0, 2**lon_bits - 1).astype(np.int64)
    lat_i = np.clip(np.floor((np.asarray(lat, float) + 90) / 180 * 2**lat_bits), 0, 2**lat_bits - 1).astype(np.int64)
    code = np.zeros(lon_i.shape, np.int64)
    for k in range(nbits):  # bits interleave longitude (even) and latitude (odd), most significant first
        src, width = (lon_i, lon_bits) if k % 2 == 0 else (lat_i, lat_bits)
        code = (code << 1) | ((src >> (width - 1 - k // 2)) & 1)
    return code


def _xy(lat, lon, city) -> tuple[np.ndarray, np.ndarray]:
    """Planar km coordinates (equirectangular at the city's latitude): distances within a city."""
    cos = np.cos(np.radians(np.array([c["lat"] for c in CITIES])))[city]
    return (lon * KM_PER_DEG * cos).astype(np.float32), (lat * KM_PER_DEG).astype(np.float32)


def _gumbel(rng, shape) -> np.ndarray:
    """Standard Gumbel noise in float32 (Gumbel top-k of u + G samples without replacement from softmax(u))."""
    return -np.log(-np.log(np.maximum(rng.random(shape, dtype=np.float32), np.float32(1e-30))))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _offset(lat, lon, rng, km, size=None):
    """Points scattered ~N(0, km) around lat/lon."""
    size = np.shape(lat) if size is None else size
    dlat = rng.normal(0, km, size) / KM_PER_DEG
    dlon = rng.normal(0, km, size) / (KM_PER_DEG * np.cos(np.radians(lat)))
    return lat + dlat, lon + dlon


def _choice_rows(rng, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of ``probs``."""
    u = rng.random(len(probs))[:, None]
    return np.minimum((u > np.cumsum(probs, axis=1)).sum(1), probs.shape[1] - 1)


def _systematic(rng, weights: np.ndarray, n: int) -> np.ndarray:
    """n draws whose counts are within one of n * weights (systematic sampling), in random order."""
    order = rng.permutation(len(weights))
    cum = np.cumsum(weights[order]) / weights.sum()
    picks = order[np.minimum(np.searchsorted(cum, (rng.random() + np.arange(n)) / n), len(weights) - 1)]
    return rng.permutation(picks)


def _pick(rng, words, n: int) -> np.ndarray:
    arr = np.array(words, dtype=object)
    return arr[rng.integers(0, len(arr), n)]


def _top_k(score: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest entries per row, best first (Gumbel top-k when noisy)."""
    k = min(k, score.shape[1])
    if k < score.shape[1]:
        idx = np.argpartition(-score, k - 1, axis=1)[:, :k]
    else:
        idx = np.tile(np.arange(k), (len(score), 1))
    order = np.argsort(-np.take_along_axis(score, idx, 1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, 1)


# --------------------------------------------------------------------------------------------
# The world: time, climate, PoIs, users
# --------------------------------------------------------------------------------------------
@dataclass
class Clock:
    start_s: int  # epoch seconds of cfg.start
    span_s: int  # length of the range
    cold_s: int  # offset where "the last part" starts
    hour0: int  # epoch hour of the first climate row (24 h before start)
    day0: int  # epoch day of the first calendar row
    is_holiday: np.ndarray  # per calendar day
    weekday: np.ndarray


@dataclass
class Climate:
    weather: np.ndarray  # [city, hour] WEATHERS index
    temp: np.ndarray  # [city, hour] °C
    offset: float = 0.0  # GenerateConfig.temperature_offset
    effect: float = 1.0  # GenerateConfig.temperature_effect


def _clock(cfg: GenerateConfig) -> Clock:
    start_s = int(cfg.start.timestamp())
    span = cfg.days * 86400
    end = datetime.fromtimestamp(start_s + span, tz=timezone.utc)
    if end > datetime.now(timezone.utc):
        raise ValueError(
            f"generate: start {cfg.start.isoformat()} + {cfg.days} days ends at {end.isoformat()}, "
            "in the future; the contract forbids future timestamps. Set generate.start earlier or fewer days."
        )
    day0 = start_s // 86400 - 1
    days = np.arange(day0, (start_s + span) // 86400 + 2)
    dates = pd.to_datetime(days * 86400, unit="s")
    weekday = ((days + 3) % 7).astype(np.int8)  # 1970-01-01 was a Thursday; Monday = 0
    hol = np.array([(d.month, d.day) in HOLIDAYS for d in dates]) & (weekday < 5)
    return Clock(start_s, span, int(cfg.cold_start_after * span), start_s // 3600 - 24, int(day0), hol, weekday)


def _climate(clock: Clock, rng: np.random.Generator, offset: float = 0.0) -> Climate:
    """Weather and temperature per city and hour; ``offset`` moves every city's seasonal mean
    (a company in a colder or warmer market sees another temperature range)."""
    n_hours = (clock.span_s + 3600) // 3600 + 48
    hours = clock.hour0 + np.arange(n_hours)
    n_days = n_hours // 24 + 2
    weather = np.zeros((len(CITIES), n_hours), np.int8)
    temp = np.zeros((len(CITIES), n_hours), np.float32)
    doy = (hours / 24.0) % 365.2425  # day of year, near enough
    hod = hours % 24
    for c, city in enumerate(CITIES):
        # AR(1) daily anomaly, interpolated to hours: fronts make temperature *change* day to day.
        eps = rng.normal(0, 2.2, n_days)
        anom = np.empty(n_days)
        anom[0] = eps[0] * 1.4
        for d in range(1, n_days):
            anom[d] = 0.7 * anom[d - 1] + eps[d]
        a_h = np.interp(np.arange(n_hours) / 24.0, np.arange(n_days), anom)
        base = offset + city["t_mean"] - city["t_amp"] * np.cos(2 * np.pi * (doy - 20) / 365.2425) + a_h
        # Weather: Markov chain on 6-hour blocks (each block keeps the last with WEATHER_STAY).
        n_blocks = n_hours // 6 + 1
        draws = WEATHER_OF_MIX[rng.choice(5, n_blocks, p=np.array(city["mix"]) / sum(city["mix"]))]
        fresh = rng.random(n_blocks) > WEATHER_STAY
        fresh[0] = True
        w = draws[np.maximum.accumulate(np.where(fresh, np.arange(n_blocks), 0))]
        w = np.repeat(w, 6)[:n_hours]
        w = np.where((w == RAINY) & (base < 1.0), SNOWY, w)
        diurnal = city["diurnal"] * WEATHER_DIURNAL[w] * np.cos(2 * np.pi * (hod - 15) / 24)
        t = base + diurnal + WEATHER_TEMP[w] + rng.normal(0, 0.4, n_hours)
        weather[c], temp[c] = w, np.clip(np.round(t, 1), -40, 50)
    return Climate(weather, temp, offset)


@dataclass
class Pois:
    n: int
    city: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    x: np.ndarray  # planar km, see _xy
    y: np.ndarray
    cat: np.ndarray
    taste: np.ndarray  # (n, 5)
    logp: np.ndarray
    quality: np.ndarray
    pop: np.ndarray
    collab: np.ndarray  # (n, K)
    delivery: np.ndarray
    opened_s: np.ndarray  # offset from start (negative: before the range)
    static: np.ndarray  # the scene-free part of utility: quality, popularity (at the log's start), delivery
    frame: pd.DataFrame | None
    drift: np.ndarray | None = None  # popularity change per second from the log's start (None: static)

    def subset(self, idx: np.ndarray) -> "Pois":
        """The PoIs ``idx`` (arrays only), e.g. one city's choice set."""
        return Pois(len(idx), **{k: (v[idx] if isinstance(v, np.ndarray) else None)
                                 for k, v in self.__dict__.items() if k != "n"})


@dataclass
class Users:
    n: int
    city: np.ndarray
    home_lat: np.ndarray
    home_lon: np.ndarray
    work_lat: np.ndarray
    work_lon: np.ndarray
    occupation: np.ndarray
    taste: np.ndarray
    price_mu: np.ndarray  # preferred log price
    price_lambda: np.ndarray  # price sensitivity
    collab: np.ndarray
    activity: np.ndarray
    registered_s: np.ndarray
    frame: pd.DataFrame


def _districts(rng) -> np.ndarray:
    """[city, district, (lat, lon)] centres; district 0 is the city centre (business district)."""
    out = np.zeros((len(CITIES), N_DISTRICTS, 2))
    for c, city in enumerate(CITIES):
        ang = rng.uniform(0, 2 * np.pi, N_DISTRICTS)
        km = np.r_[0, rng.uniform(4, 9, N_DISTRICTS - 1)]
        out[c, :, 0] = city["lat"] + km * np.sin(ang) / KM_PER_DEG
        out[c, :, 1] = city["lon"] + km * np.cos(ang) / (KM_PER_DEG * np.cos(np.radians(city["lat"])))
    return out


def _poi_text(rng, cat, taste, price) -> tuple[np.ndarray, np.ndarray]:
    """Names and descriptions that say each PoI's own attributes in words (random synonyms)."""
    names, descs = [], []
    mag = np.abs(taste[:, :4]) * TASTE_WEIGHT[:4]  # the snack dimension gets a phrase, not an adjective
    for i in range(len(cat)):
        c = CATEGORIES[cat[i]]
        adjs = []
        for d in np.argsort(-mag[i])[:3]:
            if mag[i, d] >= 0.3 and not (TASTE_DIMS[d] == "sweet" and taste[i, d] < 0):
                words = WORDS[TASTE_DIMS[d]][int(taste[i, d] > 0)]
                adjs.append(words[rng.integers(len(words))])
        brand = BRANDS[rng.integers(len(BRANDS))]
        noun = c.nouns[rng.integers(len(c.nouns))]
        named = adjs and adjs[0] not in WORDS["spicy"][0] and rng.random() < 0.6  # no "Mild Panda Noodles"
        names.append(f"{adjs[0].title()} {brand} {noun}" if named else f"{brand} {noun}")
        dishes = rng.choice(len(c.dishes), size=min(3, len(c.dishes)), replace=False)
        dish_txt = ", ".join(c.dishes[j] for j in dishes[:-1]) + " and " + c.dishes[dishes[-1]]
        term = c.terms[rng.integers(len(c.terms))]
        style = (", ".join(adjs[:-1]) + " and " + adjs[-1] + " " + term) if len(adjs) > 1 else \
            (f"{adjs[0]} {term}" if adjs else term)
        extra = []
        if taste[i, 4] > 0.4:
            extra.append(SNACK_PHRASES[rng.integers(len(SNACK_PHRASES))])
        elif taste[i, 4] < -0.4:
            extra.append(MEAL_PHRASES[rng.integers(len(MEAL_PHRASES))])
        if price[i] < 25:
            extra.append(CHEAP_PHRASES[rng.integers(len(CHEAP_PHRASES))])
        elif price[i] > 90:
            extra.append(f"{PRICEY_WORDS[rng.integers(len(PRICEY_WORDS))].capitalize()} ingredients.")
        tail = (" " + " ".join(extra)) if extra else ""
        tmpl = rng.integers(3)
        if tmpl == 0:
            d = f"{style.capitalize()}. Signature dishes: {dish_txt}.{tail}"
        elif tmpl == 1:
            d = f"Try our {dish_txt}: {style}, made to order.{tail}"
        else:
            d = f"{style.capitalize()} with {dish_txt}.{tail}"
        descs.append(d)
    return np.array(names, dtype=object), np.array(descs, dtype=object)


def _pois(cfg: GenerateConfig, clock: Clock, districts, rng) -> Pois:
    n = cfg.n_pois
    # Stratified: every city gets its share of PoIs and, within it, the category mix (small worlds too).
    city = _systematic(rng, np.array([c["share"] for c in CITIES]), n)
    cat = np.zeros(n, np.int64)
    for c in range(len(CITIES)):
        cat[city == c] = _systematic(rng, CAT_WEIGHT, int((city == c).sum()))
    dist = rng.integers(0, N_DISTRICTS, n)
    lat, lon = _offset(districts[city, dist, 0], districts[city, dist, 1], rng, 1.6)
    taste = np.clip(CAT_TASTE[cat] + rng.normal(0, 0.25, (n, len(TASTE_DIMS))), -1, 1).astype(np.float32)
    quality = rng.normal(0, 1, n)
    city_price = np.array([c["price"] for c in CITIES])[city]
    price = np.round(CAT_PRICE[cat] * city_price * np.exp(rng.normal(0, 0.25, n) + 0.1 * quality), 1)
    price = np.maximum(price, 3.0)
    # Platforms differ in how ratings are written (inflated near 5, or spread out): same quality, other scale.
    rating = np.clip(np.round(cfg.rating_mean + cfg.rating_spread * quality + rng.normal(0, 0.1, n), 1), 1.0, 5.0)
    delivery = CAT_DELIVERY[cat] * np.exp(rng.normal(0, 0.18, n)) + rng.normal(0, 3, n)
    delivery = np.clip(np.round(delivery), 10, 90).astype(np.int64)
    pop = rng.normal(0, 0.5, n) + 0.2 * quality
    collab = rng.normal(0, 1, (n, K_COLLAB)).astype(np.float32)
    n_cold = min(int(round(cfg.cold_poi_fraction * n)), n - cfg.impressions_per_request)  # full pages from the start
    cold = np.zeros(n, bool)
    cold[rng.permutation(n)[:n_cold]] = True
    opened = np.where(cold, rng.uniform(clock.cold_s, clock.cold_s + 0.85 * (clock.span_s - clock.cold_s), n),
                      -rng.uniform(30, 1500, n) * 86400).astype(np.int64)
    # New shops have few reviews: their rating is missing more often.
    rating = np.where(rng.random(n) < np.where(cold, 0.3, 0.03), np.nan, rating)
    names, descs = _poi_text(rng, cat, taste, price)
    descs = np.where(rng.random(n) < 0.04, None, descs)
    # How much a shop's standing (quality, popularity) and its delivery time weigh differs by market.
    static = (QUALITY_W * cfg.quality_effect * quality + cfg.quality_effect * pop
              - DELIVERY_W * cfg.delivery_effect * (delivery - 30)).astype(np.float32)
    frame = pd.DataFrame({
        "poi_id": np.array([f"p{i:06d}" for i in range(n)], dtype=object),
        "name": names,
        "category": np.array([CATEGORIES[k].name for k in cat], dtype=object),
        # Currencies and price levels differ between companies: only the written scale changes, the
        # utility reads the internal log price, so the world's behaviour is the same at any scale.
        "price": np.round(price * cfg.price_scale, 2).astype(np.float64),
        "rating": rating.astype(np.float64),
        "delivery_minutes": delivery,
        "geohash": geohash_encode(lat, lon, POI_PRECISION),
        "description": descs,
        "opened_at": _to_ts(clock, opened),
    })
    # Drawn last, from this stream only, so a world without drift is the same bit for bit.
    drift = (rng.normal(0, cfg.popularity_drift, n) * cfg.quality_effect / clock.span_s
             if cfg.popularity_drift > 0 else None)
    return Pois(n, city, lat, lon, *_xy(lat, lon, city), cat, taste, np.log(price).astype(np.float32), quality, pop, collab, delivery,
                opened, static, frame, drift)


def _users(cfg: GenerateConfig, clock: Clock, districts, rng) -> Users:
    n = cfg.n_users
    city = rng.choice(len(CITIES), n, p=[c["share"] for c in CITIES])
    age = rng.choice(len(AGE_GROUPS), n, p=[.05, .25, .35, .18, .10, .07])
    gender = rng.choice(len(GENDERS), n, p=[.48, .47, .05])
    home_d = rng.integers(0, N_DISTRICTS, n)
    home_lat, home_lon = _offset(districts[city, home_d, 0], districts[city, home_d, 1], rng, 2.0)
    work_d = np.where(rng.random(n) < 0.5, 0, rng.integers(0, N_DISTRICTS, n))
    work_lat, work_lon = _offset(districts[city, work_d, 0], districts[city, work_d, 1], rng, 1.0)
    occ_p = np.array([[.03, .95, .02], [.45, .50, .05], [.82, .03, .15], [.82, 0, .18], [.75, 0, .25], [.2, 0, .8]])
    occupation = _choice_rows(rng, occ_p[age])
    # Taste: personal + age (young: sweeter, spicier, snackier; older: warmer, lighter) + gender + city.
    age_shift = np.array([[-.1, .1, .1, .45, .4], [-.1, .3, .2, .3, .3], [0, .2, .1, .05, 0],
                          [.1, 0, 0, -.1, -.1], [.25, -.15, -.15, -.15, -.2], [.4, -.3, -.35, -.1, -.3]])
    gender_shift = np.array([[0, -.05, -.15, .15, .05], [0, .1, .15, -.1, 0], [0, 0, 0, 0, 0]])
    city_shift = np.array([c["taste"] for c in CITIES])
    taste = rng.normal(0, 0.6, (n, len(TASTE_DIMS))) + age_shift[age] + gender_shift[gender] + city_shift[city]
    taste = taste.astype(np.float32)
    price_mu = np.log(40.0) + rng.normal(0, 0.3, n) + np.array([-.4, -.25, 0, .1, .1, 0])[age]
    price_lambda = np.exp(rng.normal(0, 0.35, n)) * np.array([1.6, 1.4, 1.0, .9, .9, 1.1])[age]
    collab = rng.normal(0, 1, (n, K_COLLAB)).astype(np.float32)
    activity = np.exp(rng.normal(0, 1.2, n))
    n_cold = min(int(round(cfg.cold_user_fraction * n)), n - 1)  # someone must be there from the start
    cold = np.zeros(n, bool)
    cold[rng.permutation(n)[:n_cold]] = True
    registered = np.where(cold, rng.uniform(clock.cold_s, clock.cold_s + 0.9 * (clock.span_s - clock.cold_s), n),
                          -rng.uniform(1, 730, n) * 86400).astype(np.int64)
    home_gh = geohash_encode(home_lat, home_lon, HOME_PRECISION)
    frame = pd.DataFrame({
        "user_id": np.array([f"u{i:06d}" for i in range(n)], dtype=object),
        "age_group": np.where(rng.random(n) < 0.03, None, np.array(AGE_GROUPS, dtype=object)[age]),
        "gender": np.where(rng.random(n) < 0.03, None, np.array(GENDERS, dtype=object)[gender]),
        "home_geohash": np.where(rng.random(n) < 0.05, None, home_gh),
        "registered_at": _to_ts(clock, registered),
    })
    return Users(n, city, home_lat, home_lon, work_lat, work_lon, occupation, taste, price_mu, price_lambda,
                 collab, activity, registered, frame)


def _to_ts(clock: Clock, offset_s: np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(clock.start_s + np.asarray(offset_s, np.int64), unit="s", utc=True))


# --------------------------------------------------------------------------------------------
# Scenes and utility
# --------------------------------------------------------------------------------------------
@dataclass
class Scenes:
    """The scene of n events (each with a user and a time); arrays of length n."""

    user: np.ndarray
    t: np.ndarray  # seconds from start
    slot: np.ndarray
    daytype: np.ndarray  # 0 workday, 1 weekend, 2 holiday
    loc: np.ndarray  # LOCATION_TYPES index
    lat: np.ndarray
    lon: np.ndarray
    x: np.ndarray  # planar km, see _xy
    y: np.ndarray
    weather: np.ndarray
    temp: np.ndarray
    dtemp: np.ndarray  # change against the same hour yesterday
    theta: np.ndarray  # (n, 5) wanted taste = user taste + scene shift
    mu: np.ndarray  # wanted log price
    lam: np.ndarray  # price sensitivity in this scene

    def take(self, idx) -> "Scenes":
        return Scenes(**{k: v[idx] for k, v in self.__dict__.items()})


def _sample_times(rng, lo: np.ndarray, hi: np.ndarray, start_s: int) -> np.ndarray:
    """Times in [lo, hi] (seconds from start) whose hour of day follows the meal-time peaks."""
    n = len(lo)
    t = np.empty(n, np.int64)
    todo = np.arange(n)
    for _ in range(8):
        u = rng.uniform(lo[todo], hi[todo])
        day = np.floor((start_s + u) / 86400)
        peak = rng.choice(len(HOUR_PEAKS), len(todo), p=HOUR_PEAKS[:, 2] / HOUR_PEAKS[:, 2].sum())
        hour = (HOUR_PEAKS[peak, 0] + rng.normal(0, 1, len(todo)) * HOUR_PEAKS[peak, 1]) % 24
        cand = (day * 86400 + hour * 3600 - start_s).astype(np.int64)
        ok = (cand >= lo[todo]) & (cand <= hi[todo])
        t[todo[ok]] = cand[ok]
        todo = todo[~ok]
        if len(todo) == 0:
            break
    if len(todo):  # windows shorter than a day may miss every peak: take any time in them
        t[todo] = rng.uniform(lo[todo], hi[todo]).astype(np.int64)
    return t


def _scenes(users: Users, clock: Clock, climate: Climate, districts, rng, user: np.ndarray, t: np.ndarray) -> Scenes:
    """The scene of each (user, time): slot, day type, location, weather, and the wants it shifts."""
    n = len(user)
    abs_s = clock.start_s + t
    hour = (abs_s % 86400) // 3600
    slot = SLOT_OF_HOUR[hour]
    day = abs_s // 86400 - clock.day0
    daytype = np.where(clock.is_holiday[day], 2, np.where(clock.weekday[day] >= 5, 1, 0))
    loc = _choice_rows(rng, LOCATION_TABLE[users.occupation[user], daytype, slot])
    # Where: home / office-or-school / a district (outdoor) / somewhere near home (other).
    city = users.city[user]
    lat, lon = users.home_lat[user].copy(), users.home_lon[user].copy()
    at_work = (loc == 1) | (loc == 2)
    lat[at_work], lon[at_work] = users.work_lat[user[at_work]], users.work_lon[user[at_work]]
    outdoor = loc == 3
    d = rng.integers(0, N_DISTRICTS, n)
    lat[outdoor], lon[outdoor] = districts[city[outdoor], d[outdoor], 0], districts[city[outdoor], d[outdoor], 1]
    spread = np.select([loc == 0, at_work, outdoor], [0.15, 0.2, 2.0], 3.0)  # km
    lat, lon = _offset(lat, lon, rng, spread)
    h = abs_s // 3600 - clock.hour0
    weather = climate.weather[city, h]
    temp = climate.temp[city, h]
    dtemp = temp - climate.temp[city, h - 24]
    temp_offset, temp_effect = climate.offset, climate.effect

    # The scene's shift of what is wanted (TASTE_DIMS: warm, spicy, heavy, sweet, snack).
    sh = np.zeros((n, len(TASTE_DIMS)), np.float32)
    hot = np.maximum(temp - 22 - temp_offset, 0)  # "hot" and "cold" are relative to what the market is used to
    # How much temperature matters differs by market and cuisine (``temperature_effect`` scales it).
    te = np.float32(temp_effect)
    sh[:, 0] = te * (-0.07 * (temp - 15 - temp_offset) - 0.06 * np.minimum(dtemp, 0)) + WEATHER_WARM[weather]
    sh[:, 2] = WEATHER_HEAVY[weather] - te * 0.03 * hot
    sh[:, 3] = te * 0.04 * hot
    sh[:, 4] = te * 0.03 * hot
    sh += SLOT_SHIFT[slot] + LOCATION_SHIFT[loc] + DAYTYPE_SHIFT[daytype]
    theta = users.taste[user] + sh
    office_lunch = (loc == 1) & (slot == 1)
    mu = (users.price_mu[user] + SLOT_PRICE[slot] + DAYTYPE_PRICE[daytype] + LOCATION_PRICE[loc]
          - 0.15 * office_lunch)
    lam = users.price_lambda[user] * np.where(office_lunch, 1.3, 1.0) * DAYTYPE_PRICE_SENSITIVITY[daytype]
    return Scenes(user, t, slot, daytype, loc, lat, lon, *_xy(lat, lon, city), weather, temp, dtemp, theta.astype(np.float32),
                  mu.astype(np.float32), lam.astype(np.float32))


@dataclass(frozen=True)
class Effects:
    """How much each part of the utility weighs in this world (GenerateConfig's ``*_effect`` knobs
    times the module constants; all 1 = the default world, bit for bit)."""
    taste: np.ndarray = field(default_factory=lambda: TASTE_WEIGHT)
    collab_half: float = COLLAB_W / 2
    distance: float = DIST_W

    @classmethod
    def of(cls, cfg: GenerateConfig) -> "Effects":
        return cls((TASTE_WEIGHT * np.float32(cfg.taste_effect)).astype(np.float32),
                   COLLAB_W / 2 * cfg.collab_effect, DIST_W * cfg.distance_effect)


def _utility(sc: Scenes, users: Users, pois: Pois, poi_idx: np.ndarray | None = None, effects: Effects = Effects()):
    """Utility, price fit and taste match: (n, P) over all ``pois``, or (n,) for pairs with ``poi_idx``.

    Returns float32 arrays ``(u, price_fit, match)``; ``u`` already includes ``price_fit``.
    """
    if poi_idx is not None:  # pairs: the same formula on gathered rows
        p = poi_idx
        match = np.einsum("nd,nd->n", sc.theta * effects.taste, pois.taste[p])
        collab = np.einsum("nd,nd->n", users.collab[sc.user], pois.collab[p])
        u = match + CAT_SLOT_TERM[pois.cat[p], sc.slot] + effects.collab_half * collab + pois.static[p]
        if pois.drift is not None:
            u = u + (pois.drift[p] * sc.t).astype(np.float32)
        gap = pois.logp[p] - sc.mu
        dx, dy = pois.x[p] - sc.x, pois.y[p] - sc.y
        lam = sc.lam
    else:  # all PoIs: (n, P) float32, built in place (this is the generator's hot loop)
        match = (sc.theta * effects.taste) @ pois.taste.T
        u = users.collab[sc.user] @ pois.collab.T
        u *= np.float32(effects.collab_half)
        u += match
        u += CAT_SLOT_TERM[:, sc.slot][pois.cat].T
        u += pois.static[None, :]
        if pois.drift is not None:
            u += (sc.t[:, None] * pois.drift[None, :]).astype(np.float32)
        gap = pois.logp[None, :] - sc.mu[:, None]
        dx, dy = pois.x[None, :] - sc.x[:, None], pois.y[None, :] - sc.y[:, None]
        lam = sc.lam[:, None]
    price_fit = np.where(gap > 0, np.float32(-1.5) * gap, np.float32(0.4) * gap)
    price_fit *= lam
    u += price_fit
    dx *= dx
    dy *= dy
    dx += dy
    u -= np.float32(effects.distance) * np.sqrt(dx)
    return u.astype(np.float32, copy=False), price_fit.astype(np.float32, copy=False), match.astype(np.float32, copy=False)


def _choice_set(pois: Pois, city: int, need: int) -> np.ndarray:
    """PoIs a user in ``city`` chooses among: the city's, or all if it has fewer than ``need`` open from the start
    (tiny configs; other cities' PoIs are then far away and only fill a page)."""
    own = np.flatnonzero(pois.city == city)
    return own if (pois.opened_s[own] <= 0).sum() >= need else np.arange(pois.n)


def _chunks(n: int, n_pois: int):
    size = max(256, CHUNK_CELLS // max(n_pois, 1))
    for a in range(0, n, size):
        yield slice(a, min(n, a + size))


def _open_mask(sc: Scenes, pois: Pois) -> np.ndarray:
    return pois.opened_s[None, :] <= sc.t[:, None]


def _order_logit(price_fit, match, quality, rng):
    """P(order | click) before its bias: price fit, quality and taste match, plus hidden noise."""
    return 1.2 * price_fit + 0.35 * quality + 0.25 * match + rng.normal(0, 0.5, np.shape(match))


def _calibrate(logit: np.ndarray, target: float, weight: np.ndarray | None = None) -> float:
    """Bias b so that the (weighted) mean of sigmoid(logit + b) equals ``target`` (bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        p = _sigmoid(logit + mid)
        m = np.average(p, weights=weight) if weight is not None else p.mean()
        lo, hi = (mid, hi) if m < target else (lo, mid)
    return (lo + hi) / 2


# --------------------------------------------------------------------------------------------
# Events: impressions and the behaviour log
# --------------------------------------------------------------------------------------------
class _Log:
    """Behaviour rows collected chunk by chunk: ts, user, poi (-1 for search), behavior, query, scene row."""

    def __init__(self):
        self.parts = []

    def add(self, t, user, poi, behavior, query, scene_row):
        n = len(t)
        self.parts.append((np.asarray(t, np.int64), np.asarray(user), np.asarray(poi, np.int64),
                           np.full(n, behavior, np.int8) if np.isscalar(behavior) else np.asarray(behavior, np.int8),
                           np.asarray(query, object) if query is not None else np.full(n, None, object),
                           np.asarray(scene_row, np.int64)))

    def arrays(self):
        return [np.concatenate(x) for x in zip(*self.parts)]


B = {b: i for i, b in enumerate(BEHAVIORS)}


def _impressions(cfg, clock, climate, districts, users, pois, rng):
    """Requests, their candidates and labels; returns the impressions arrays and the fitted biases."""
    R, k = cfg.n_requests, cfg.impressions_per_request
    lo = np.zeros(R, np.int64)
    hi = np.full(R, clock.span_s - END_MARGIN_S, np.int64)
    t = np.sort(_sample_times(rng, lo, hi, clock.start_s))
    # Users registered by then, weighted by activity (sqrt: heavy users browse more, not linearly).
    by_reg = np.argsort(users.registered_s, kind="stable")
    cw = np.cumsum(np.sqrt(users.activity[by_reg]))
    n_elig = np.searchsorted(users.registered_s[by_reg], t, side="right")
    n_elig = np.maximum(n_elig, 1)  # nobody registered yet (impossible unless all are cold): first user
    pick = np.searchsorted(cw, rng.random(R) * cw[n_elig - 1], side="right")
    user = by_reg[np.minimum(pick, n_elig - 1)]
    sc = _scenes(users, clock, climate, districts, rng, user, t)

    n_rel = int(np.ceil(RELEVANT_SHARE * k))
    effects = Effects.of(cfg)
    parts = []
    for c in range(len(CITIES)):
        members = np.flatnonzero(users.city[user] == c)
        local = _choice_set(pois, c, k)
        sub = pois.subset(local)
        for sl in _chunks(len(members), sub.n):
            req = members[sl]
            s = sc.take(req)
            u, price_fit, match = _utility(s, users, sub, effects=effects)
            ok = _open_mask(s, sub)
            rel = np.where(ok, u / 2 + _gumbel(rng, u.shape), -np.inf)
            rel_idx = _top_k(rel, n_rel)
            rnd = np.where(ok, _gumbel(rng, u.shape) - 1e3 * (sub.city != c)[None, :], -np.inf)
            np.put_along_axis(rnd, rel_idx, -np.inf, 1)
            rnd_idx = _top_k(rnd, k - rel_idx.shape[1])
            cand = np.concatenate([rel_idx, rnd_idx], 1)
            valid = np.concatenate([np.take_along_axis(rel, rel_idx, 1), np.take_along_axis(rnd, rnd_idx, 1)], 1)
            valid = valid > -np.inf
            # Page order: a legacy ranker's noisy score; invalid slots (too few open PoIs) go last.
            uc = np.take_along_axis(u, cand, 1)
            rank_score = np.where(valid, 0.35 * uc + _gumbel(rng, uc.shape), -np.inf)
            order = np.argsort(-rank_score, axis=1, kind="stable")
            cand, valid, uc = (np.take_along_axis(a, order, 1) for a in (cand, valid, uc))
            pf, mt = np.take_along_axis(price_fit, cand, 1), np.take_along_axis(match, cand, 1)
            pos = np.broadcast_to(np.arange(cand.shape[1]), cand.shape)
            rows = np.broadcast_to(req[:, None], cand.shape)
            eps = rng.normal(0, cfg.hidden_noise_std, cand.shape)
            click_logit = CLICK_SCALE * uc - cfg.position_bias * pos + eps
            order_logit = _order_logit(pf, mt, sub.quality[cand], rng)
            parts.append([a[valid] for a in (rows, local[cand], pos, click_logit, order_logit)])
    rows, poi, pos, click_logit, order_logit = (np.concatenate(x) for x in zip(*parts))
    by_page = np.lexsort((pos, rows))  # requests in time order, each page top to bottom
    rows, poi, pos, click_logit, order_logit = (a[by_page] for a in (rows, poi, pos, click_logit, order_logit))
    b_click = _calibrate(click_logit, cfg.ctr)
    p_click = _sigmoid(click_logit + b_click)
    b_order = _calibrate(order_logit, cfg.cvr, weight=p_click)
    p_order_given_click = _sigmoid(order_logit + b_order)
    click = rng.random(len(rows)) < p_click
    order = click & (rng.random(len(rows)) < p_order_given_click)
    return dict(sc=sc, row=rows, poi=poi, pos=pos, p_click=p_click, p_order=p_click * p_order_given_click,
                click=click, order=order, b_click=b_click, b_order=b_order)


def _queries(rng, sc: Scenes, intent_cat: np.ndarray) -> np.ndarray:
    """Search text: the wanted taste (scene-shifted), the intended category, meal or price words."""
    n = len(intent_cat)
    if n == 0:
        return np.array([], dtype=object)
    w = sc.theta[:, :4] * TASTE_WEIGHT[:4]
    d = np.argmax(np.abs(w), 1)
    side = (w[np.arange(n), d] > 0).astype(int)
    taste_word = np.array([WORDS[TASTE_DIMS[di]][si][j % len(WORDS[TASTE_DIMS[di]][si])]
                           for di, si, j in zip(d, side, rng.integers(0, 60, n))], dtype=object)
    term = np.array([CATEGORIES[c].terms[j % len(CATEGORIES[c].terms)]
                     for c, j in zip(intent_cat, rng.integers(0, 60, n))], dtype=object)
    dish = np.array([CATEGORIES[c].dishes[j % len(CATEGORIES[c].dishes)]
                     for c, j in zip(intent_cat, rng.integers(0, 60, n))], dtype=object)
    meal = np.array(MEAL_WORDS, dtype=object)[sc.slot]
    cheap, pricey = sc.mu < np.log(30), sc.mu > np.log(70)
    price_word = np.where(cheap, _pick(rng, CHEAP_WORDS, n), _pick(rng, PRICEY_WORDS, n))
    tmpl = rng.choice(6, n, p=[.25, .3, .12, .1, .13, .1])
    tmpl = np.where((tmpl == 3) & ~cheap & ~pricey, 1, tmpl)  # price words only when price matters
    q = np.select(
        [tmpl == 0, tmpl == 1, tmpl == 2, tmpl == 3, tmpl == 4],
        [term, taste_word + " " + term, taste_word + " " + meal, price_word + " " + term, dish],
        taste_word + " " + term + " near me",
    )
    return q.astype(object)


def _sessions(cfg, clock, climate, districts, users, pois, imp, rng, log: _Log, scene_offset: int,
              n_logged: int) -> Scenes:
    """The behaviour log's sessions: search, views (a softmax choice), clicks, favourites, orders."""
    window = (clock.span_s - END_MARGIN_S - np.maximum(users.registered_s, 0)).clip(min=0)
    weight = users.activity * window
    # Size the log to mean_behaviors_per_user in all, counting the rows impressions already logged.
    total = max(cfg.n_users * cfg.mean_behaviors_per_user - n_logged, 0.0)
    expected = total * weight / max(weight.sum(), 1e-9)
    n_sess = rng.poisson(expected / BEHAVIORS_PER_SESSION)
    user = np.repeat(np.arange(users.n), n_sess)
    lo = np.maximum(users.registered_s[user], 0)
    t = _sample_times(rng, lo, np.full(len(user), clock.span_s - END_MARGIN_S, np.int64), clock.start_s)
    sc = _scenes(users, clock, climate, districts, rng, user, t)
    effects = Effects.of(cfg)
    for c in range(len(CITIES)):
        members = np.flatnonzero(users.city[user] == c)
        local = _choice_set(pois, c, 12)
        sub = pois.subset(local)
        max_views = min(12, sub.n)
        for sl in _chunks(len(members), sub.n):
            idx = members[sl]
            _session_chunk(cfg, sc.take(idx), idx + scene_offset, users, sub, local, max_views, imp, rng, log,
                           effects)
    return sc


def _session_chunk(cfg, s: Scenes, srow, users, sub: Pois, local, max_views, imp, rng, log: _Log,
                   effects: Effects):
    """Sessions ``s`` choosing among the PoIs ``sub`` (global ids ``local``); appends their rows to ``log``."""
    n = len(s.user)
    u, price_fit, match = _utility(s, users, sub, effects=effects)
    score = np.where(_open_mask(s, sub), u + _gumbel(rng, u.shape), -np.inf)
    views = _top_k(score, max_views)
    n_views = np.minimum(1 + rng.poisson(MEAN_VIEWS - 1, n), max_views)
    keep = np.arange(views.shape[1])[None, :] < n_views[:, None]
    keep &= np.take_along_axis(score, views, 1) > -np.inf
    rank = np.broadcast_to(np.arange(views.shape[1]), views.shape)
    uv = np.take_along_axis(u, views, 1)
    p_click = _sigmoid(CLICK_SCALE * uv + imp["b_click"] + SESSION_CLICK_BOOST - cfg.position_bias * rank
                       + rng.normal(0, cfg.hidden_noise_std, uv.shape))
    click = keep & (rng.random(uv.shape) < p_click)
    quality = sub.quality[views]
    ol = _order_logit(np.take_along_axis(price_fit, views, 1), np.take_along_axis(match, views, 1), quality, rng)
    order = click & (rng.random(uv.shape) < _sigmoid(ol + imp["b_order"] + SESSION_ORDER_BOOST))
    fav = click & (rng.random(uv.shape) < FAVORITE_RATE * np.exp(0.3 * quality))

    # Timing: search at t0, then views every ~20 s, clicks seconds after the view, orders minutes after.
    search = rng.random(n) < SEARCH_RATE
    t_view = s.t[:, None] + np.where(search, 15, 0)[:, None] + 20 * rank + rng.integers(0, 15, uv.shape)
    t_click = t_view + rng.integers(2, 20, uv.shape)
    rows = np.broadcast_to(np.arange(n)[:, None], uv.shape)
    poi = local[views]
    for mask, tt, b in ((keep, t_view, "view"), (click, t_click, "click"),
                        (fav, t_click + rng.integers(5, 90, uv.shape), "favorite"),
                        (order, t_click + rng.integers(60, 900, uv.shape), "order")):
        r = rows[mask]
        log.add(tt[mask], s.user[r], poi[mask], B[b], None, srow[r])
    si = np.flatnonzero(search)
    queries = _queries(rng, s.take(si), sub.cat[views[si, 0]])  # the first view is what they searched for
    log.add(s.t[si], s.user[si], np.full(len(si), -1), B["search"], queries, srow[si])


def _impression_behaviors(imp, pois, rng, log: _Log):
    """Clicks (and their favourites, orders) of impressions, logged seconds after the impression."""
    sc = imp["sc"]
    c = np.flatnonzero(imp["click"])
    t_click = sc.t[imp["row"][c]] + rng.integers(2, 40, len(c))
    user, poi, srow = sc.user[imp["row"][c]], imp["poi"][c], imp["row"][c]
    log.add(t_click, user, poi, B["click"], None, srow)
    fav = rng.random(len(c)) < FAVORITE_RATE * np.exp(0.3 * pois.quality[poi])
    log.add(t_click[fav] + rng.integers(5, 90, fav.sum()), user[fav], poi[fav], B["favorite"], None, srow[fav])
    o = imp["order"][c]
    log.add(t_click[o] + rng.integers(60, 900, o.sum()), user[o], poi[o], B["order"], None, srow[o])


def _scene_columns(sc: Scenes, rows: np.ndarray) -> dict:
    return {
        "geohash": geohash_encode(sc.lat, sc.lon, EVENT_PRECISION)[rows],
        "location_type": np.array(LOCATION_TYPES, dtype=object)[sc.loc[rows]],
        "weather": np.array(WEATHERS, dtype=object)[sc.weather[rows]],
        "temperature_c": np.round(sc.temp[rows].astype(np.float64), 1),
        "is_holiday": sc.daytype[rows] == 2,
    }


def _concat_scenes(a: Scenes, b: Scenes) -> Scenes:
    return Scenes(**{k: np.concatenate([getattr(a, k), getattr(b, k)]) for k in a.__dict__})


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def _request_ids(n: int) -> np.ndarray:
    return np.array([f"r{i:07d}" for i in range(n)], dtype=object)


def _world(cfg: GenerateConfig, seed: int):
    """The world up to its impressions: (streams, clock, climate, districts, pois, users, impressions);
    the log is drawn from ``streams[5:]`` afterwards."""
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(7)]
    clock = _clock(cfg)
    climate = _climate(clock, streams[0], cfg.temperature_offset)
    climate.effect = cfg.temperature_effect
    districts = _districts(streams[1])
    pois = _pois(cfg, clock, districts, streams[2])
    users = _users(cfg, clock, districts, streams[3])
    return streams, clock, climate, districts, pois, users, _impressions(cfg, clock, climate, districts, users, pois,
                                                                          streams[4])


def generate_tables(cfg: GenerateConfig, seed: int) -> dict[str, pd.DataFrame]:
    """Generate one synthetic batch in memory: pois, users, behaviors, impressions (contract columns) and truth."""
    streams, clock, climate, districts, pois, users, imp = _world(cfg, seed)

    log = _Log()
    _impression_behaviors(imp, pois, streams[5], log)
    n_logged = sum(len(p[0]) for p in log.parts)
    sess = _sessions(cfg, clock, climate, districts, users, pois, imp, streams[6], log, len(imp["sc"].user), n_logged)
    t, user, poi, behavior, query, srow = log.arrays()
    order = np.lexsort((behavior, user, t))
    t, user, poi, behavior, query, srow = (a[order] for a in (t, user, poi, behavior, query, srow))
    scenes = _concat_scenes(imp["sc"], sess)
    poi_ids, user_ids = pois.frame["poi_id"].to_numpy(), users.frame["user_id"].to_numpy()
    behaviors = pd.DataFrame({
        "ts": _to_ts(clock, t),
        "user_id": user_ids[user],
        "poi_id": np.where(poi >= 0, poi_ids[np.maximum(poi, 0)], None),
        "behavior": np.array(BEHAVIORS, dtype=object)[behavior],
        "query": query,
        **_scene_columns(scenes, srow),
    })

    isc = imp["sc"]
    request_ids = _request_ids(len(isc.user))
    rows = imp["row"]
    impressions = pd.DataFrame({
        "request_id": request_ids[rows],
        "ts": _to_ts(clock, isc.t[rows]),
        "user_id": user_ids[isc.user[rows]],
        "poi_id": poi_ids[imp["poi"]],
        "position": imp["pos"].astype(np.int64),
        **_scene_columns(isc, rows),
        "click": imp["click"].astype(np.int64),
        "order": imp["order"].astype(np.int64),
    })
    truth = pd.DataFrame({
        "request_id": impressions["request_id"],
        "poi_id": impressions["poi_id"],
        "p_click": imp["p_click"].astype(np.float64),
        "p_order": imp["p_order"].astype(np.float64),
    })
    out = {"pois": pois.frame, "users": users.frame, "behaviors": behaviors, "impressions": impressions}
    for name, df in out.items():  # built in contract order; a cheap guard instead of a reordering copy
        assert list(df.columns) == CONTRACT[name].column_names, name
    out["truth"] = truth[list(TRUTH_COLUMNS)]
    return out


def hidden_variables(cfg: GenerateConfig, seed: int) -> dict[str, pd.DataFrame]:
    """The latent side of the world ``generate_tables(cfg, seed)`` writes, which no contract column holds.

    For diagnostics only (``benchmarks/ctr_headroom.py``: how much a model would gain from knowing
    each part); nothing in the pipeline reads it. Same seed and config → the same world, so the keys
    match the generated tables:

    * ``users`` (``user_id``): taste per ``TASTE_DIMS``, ``price_mu`` (preferred log price),
      ``price_lambda`` (sensitivity), ``collab0..`` (collaborative factor);
    * ``pois`` (``poi_id``): taste, ``log_price``, ``static`` (quality + popularity − delivery, at the
      log's start), ``drift_per_day`` (its change a day, 0 without ``popularity_drift``), ``collab0..``;
    * ``requests`` (``request_id``): the scene-adjusted wanted taste ``want_<dim>``, ``want_mu`` and
      ``want_lambda`` of the request's user in its scene;
    * ``impressions`` (``request_id``, ``poi_id``): ``click_logit`` = a·U − position bias·position,
      the click logit before the hidden noise ε and the calibrated bias (σ(click_logit + ε + b) is
      the truth file's ``p_click``).
    """
    _, _, _, _, pois, users, imp = _world(cfg, seed)
    sc = imp["sc"]
    u, _, _ = _utility(sc.take(imp["row"]), users, pois, imp["poi"], Effects.of(cfg))
    collab = [f"collab{j}" for j in range(K_COLLAB)]
    taste = list(TASTE_DIMS)
    user_ids, poi_ids = users.frame["user_id"].to_numpy(), pois.frame["poi_id"].to_numpy()
    request_ids = _request_ids(len(sc.user))
    return {
        "users": pd.DataFrame({"user_id": user_ids, **dict(zip(taste, users.taste.T)), "price_mu": users.price_mu,
                               "price_lambda": users.price_lambda, **dict(zip(collab, users.collab.T))}),
        "pois": pd.DataFrame({"poi_id": poi_ids, **dict(zip(taste, pois.taste.T)), "log_price": pois.logp,
                              "static": pois.static,
                              "drift_per_day": (pois.drift * 86400 if pois.drift is not None else np.zeros(pois.n)),
                              **dict(zip(collab, pois.collab.T))}),
        "requests": pd.DataFrame({"request_id": request_ids, **{f"want_{d}": v for d, v in zip(taste, sc.theta.T)},
                                  "want_mu": sc.mu, "want_lambda": sc.lam}),
        "impressions": pd.DataFrame({"request_id": request_ids[imp["row"]], "poi_id": poi_ids[imp["poi"]],
                                     "click_logit": CLICK_SCALE * u - cfg.position_bias * imp["pos"]}),
    }


def _csv_ready(df: pd.DataFrame) -> pd.DataFrame:
    """Timestamps as ISO-8601 UTC strings ending in 'Z' (fast, via numpy)."""
    df = df.copy()
    for col in df.columns:
        if isinstance(df[col].dtype, pd.DatetimeTZDtype):
            v = df[col].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[s]")
            df[col] = np.char.add(np.datetime_as_string(v, unit="s"), "Z").astype(object)
    return df


def generate_batch(cfg: GenerateConfig, seed: int, out_dir: Path) -> dict[str, int]:
    """Write a batch folder in the raw contract (pois, users, behaviors, impressions as .parquet or .csv
    per cfg.format) plus truth/impressions.parquet; return row counts per table."""
    out_dir = Path(out_dir)
    tables = generate_tables(cfg, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "truth").mkdir(exist_ok=True)
    for name in TABLES:
        for ext in ("parquet", "csv"):  # a stale table in the other format would make the batch ambiguous
            (out_dir / f"{name}.{ext}").unlink(missing_ok=True)
        path = out_dir / f"{name}.{cfg.format}"
        if cfg.format == "csv":
            _csv_ready(tables[name]).to_csv(path, index=False)
        else:
            tables[name].to_parquet(path, index=False)
    tables["truth"].to_parquet(out_dir / "truth" / "impressions.parquet", index=False)
    return {name: len(df) for name, df in tables.items()}
