"""The second half of the families (``SECOND_HALF``) through test_models_families.py's four checks against
transformers: prefill, decode, batch prefill/decode, greedy tokens. A file of its own so that pytest-xdist
(``--dist loadfile``) runs the two halves on two workers."""

from __future__ import annotations

import pytest
from test_models_families import (  # noqa: F401 - the imported tests run here with this file's fixture
    SECOND_HALF,
    open_family,
    test_batch_prefill_and_batch_decode,
    test_greedy_tokens_match_transformers,
    test_prefill_then_decode,
    test_window_and_chunk_cover_the_test,
)


@pytest.fixture(scope="module", params=SECOND_HALF)
def family(request, compiled, family_checkpoints):
    yield from open_family(request.param, compiled, family_checkpoints)
