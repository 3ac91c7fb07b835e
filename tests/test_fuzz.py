"""Fuzzing the loaders (tests/fuzzing.py): every mutant of a valid file loads or fails with one InputError line."""
import pytest

from tests import fuzzing

MUTANTS = 2000          # Per file kind.
PEAK_MEMORY = 1 << 30   # Resident memory of a worker, bytes.


@pytest.mark.slow
def test_mutants_load_or_fail_with_one_line(tmp_path):
    report = fuzzing.run(fuzzing.FUZZED, MUTANTS, str(tmp_path), seed=0, workers=2)
    print(report.summary())
    assert not report.failures, report.summary()
    for kind, counts in report.counts.items():
        assert sum(counts.values()) == MUTANTS, kind
        assert counts.get('ok', 0) > 0 and counts.get('input', 0) > MUTANTS // 4, (kind, counts)  # Both paths reached.
    assert report.peak_rss < PEAK_MEMORY, report.summary()


@pytest.mark.slow
def test_harness_reports_every_kind_of_failure(tmp_path):
    # A loader that crashes, exceeds the memory limit, hangs, raises another type or a two-line message: each is
    # reported once, with its saved mutant, and the run goes on in restarted workers.
    report = fuzzing.run(['selftest'], 2 * len(fuzzing.SELFTEST), str(tmp_path), workers=2, timeout=5)
    assert report.counts['selftest'] == {'ok': 2, 'input': 2, 'crash (exit code -11)': 2, 'memory': 2,
                                         'timeout': 2, 'exception': 2, 'bad-message': 2}, report.summary()
    saved = sorted(open(path, 'rb').read() for _, _, _, _, path in report.failures)
    assert saved == sorted(2 * [b'crash', b'memory', b'hang', b'other', b'two lines'])
