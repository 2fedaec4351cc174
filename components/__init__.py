"""SceneRec components: the pure pipeline steps (no orchestration imports here)."""
