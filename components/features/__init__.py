"""Feature engineering (pure pandas, point-in-time snapshots) and the Feast feature store.

``engineering`` builds the timestamped feature tables; ``store`` applies feature_repo/,
materialises the online store and serves training frames and online features.
"""
