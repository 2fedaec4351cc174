"""Entities: the keys that feature rows and requests join on."""
from feast import Entity, ValueType

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="A customer of the delivery platform.")
poi = Entity(name="poi", join_keys=["poi_id"], value_type=ValueType.STRING,
             description="A point of interest: a shop that delivers.")
context = Entity(name="context", join_keys=["context_id"], value_type=ValueType.STRING,
                 description="A CoFARS context: 'location_type|time_slot|weather'.")
scene_value = Entity(name="scene_value", join_keys=["scene_value_id"], value_type=ValueType.STRING,
                     description="One value of one real-time scene feature, e.g. 'weather=rainy' (LARR).")
