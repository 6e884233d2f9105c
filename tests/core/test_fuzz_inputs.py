"""Seeded byte flips of small model files: only InputError (naming the file) ever escapes.

The bigger run is ``python -m tests.benchmarks.fuzz_inputs``; this one is bounded to a
few hundred files so it stays part of ``make test`` (about 10-20 s).
"""

from __future__ import annotations

import pytest

from tests.benchmarks.fuzz_inputs import KINDS, fuzz, make_samples

FLIPS_PER_KIND = 75  # 300 corrupted files


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return make_samples(tmp_path_factory.mktemp("fuzz_samples"))


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
def test_byte_flips_end_in_input_errors_that_name_the_file(samples, kind, tmp_path):
    result = fuzz({kind: samples[kind]}, FLIPS_PER_KIND, seed=17, workdir=tmp_path)
    assert sum(result["outcomes"].values()) == FLIPS_PER_KIND
    assert result["escapes"] == []
    assert result["unnamed"] == []
