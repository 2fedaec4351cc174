"""benchmarks/embedders.py: a kept MNRL encoder is reused only at the rate it was trained at."""
import json
import sys

import pytest

from tests.factories import REPO


@pytest.fixture(scope="module")
def embedders():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import embedders

    return embedders


def test_kept_mnrl_encoder_is_retrained_at_another_rate(embedders, tmp_path):
    d = tmp_path / "encoder_minilm_mnrl"
    assert embedders.mnrl_needs_training(d, 2e-5)  # nothing kept
    d.mkdir()
    (d / "encoder.json").write_text("{}")
    # kept before --mnrl-lr existed (no rate file): it ran at sentence-transformers' 2e-5
    assert not embedders.mnrl_needs_training(d, 2e-5)
    assert embedders.mnrl_needs_training(d, 1.5e-4)
    (d / embedders.MNRL_RATE_FILE).write_text(json.dumps(1.5e-4))
    assert not embedders.mnrl_needs_training(d, 1.5e-4)
    assert embedders.mnrl_needs_training(d, 2e-5)
