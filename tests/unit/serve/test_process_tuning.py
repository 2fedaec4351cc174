"""The service's process-level settings: the C allocator's mmap threshold, the frozen heap, the scoring slots."""
import gc
import platform
import weakref

import pytest

from components.serve.app import settle_heap, tune_malloc


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_malloc_sets_glibc_thresholds():
    assert tune_malloc(32) is True
    assert tune_malloc(0) is False  # 0 leaves glibc's dynamic threshold alone


def test_settle_heap_freezes_what_is_alive_and_collects_the_rest():
    class Cycle:
        pass

    a, b = Cycle(), Cycle()
    a.other, b.other = b, a  # garbage only a collection frees
    gone = weakref.ref(a)
    kept = Cycle()
    del a, b
    try:
        settle_heap()
        assert gone() is None  # collected, not frozen
        assert gc.get_freeze_count() > 1000  # the interpreter's and the libraries' objects, out of the collector's walks
        assert kept not in gc.get_objects()  # alive, so frozen: no collection walks it any more
    finally:
        gc.unfreeze()


def test_scoring_slots_default_to_the_cpus_the_process_may_use():
    import os

    from components.serve.app import scoring_slots

    assert scoring_slots(3) == 3
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert scoring_slots(0) == cpus >= 1


def test_metrics_survive_feast_setting_the_prometheus_multiprocess_folder(tmp_path):
    """Importing Feast sets PROMETHEUS_MULTIPROC_DIR to a folder of its own: a single-process service
    whose prometheus_client was imported first must still expose its own counters (it exposed an
    empty page)."""
    import os
    import subprocess
    import sys

    code = ("from components.serve.app import Metrics\n"
            "m = Metrics(); m.requests.labels('200').inc(3)\n"
            "import feast.feature_store, os\n"
            "assert os.environ.get('PROMETHEUS_MULTIPROC_DIR'), 'Feast no longer sets it: the test lost its point'\n"
            "print(m.text().decode())\n")
    env = {k: v for k, v in os.environ.items() if "PROMETHEUS" not in k and k != "SCENEREC_METRICS_DIR"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'scenerec_requests_total{status="200"} 3.0' in out.stdout
