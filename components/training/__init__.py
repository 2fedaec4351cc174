"""Training shared by every SceneRec model: the one loop (``fit``), its one checkpoint format and
the run-time set-up (device, precision, DDP, CPU threads).

- loop.py        ``fit(acc, Recipe(...))``: clipping, progress, metrics, early stopping, resume
- checkpoint.py  ``step_<N>/`` folders written atomically, ``fingerprint()`` of knobs and data
- runtime.py     ``make_accelerator``, ``cpu_threads``, ``world_size``
"""
from components.training.checkpoint import fingerprint
from components.training.loop import FitResult, MlflowLog, Recipe, fit
from components.training.runtime import cpu_threads, make_accelerator, world_size

__all__ = ["FitResult", "MlflowLog", "Recipe", "cpu_threads", "fingerprint", "fit", "make_accelerator", "world_size"]
