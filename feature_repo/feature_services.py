"""Feature services: named, versionable sets of features that models consume."""
from feast import FeatureService

from feature_views import context_stats, poi_profile, poi_stats, user_profile, user_stats

ctr_training = FeatureService(
    name="ctr_training",
    features=[user_stats, user_profile, poi_profile, poi_stats, context_stats],
    description="Everything the CTR / CTCVR models train on; joined point-in-time to impressions.",
)
