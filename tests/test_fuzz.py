"""Fuzzing the loaders (tests/fuzzing.py): every mutant of a valid file loads or fails with one InputError line."""
import pytest

from tests import fuzzing

MUTANTS = 2000          # Per file kind.
PEAK_MEMORY = 1 << 30   # Resident memory of a worker, bytes.


@pytest.mark.slow
def test_mutants_load_or_fail_with_one_line(tmp_path):
    report = fuzzing.run(list(fuzzing.KINDS), MUTANTS, str(tmp_path), seed=0, workers=2)
    print(report.summary())
    assert not report.failures, report.summary()
    for kind, counts in report.counts.items():
        assert sum(counts.values()) == MUTANTS, kind
        assert counts.get('ok', 0) > 0 and counts.get('input', 0) > MUTANTS // 4, (kind, counts)  # Both paths reached.
    assert report.peak_rss < PEAK_MEMORY, report.summary()
