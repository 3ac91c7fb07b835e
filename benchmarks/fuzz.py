"""Longer runs of the loader fuzzer of tests/test_fuzz.py (manual; the count tried is recorded in docs/security.md).

    python benchmarks/fuzz.py --mutants=20000 --seed=1
    python benchmarks/fuzz.py --kinds=network-pickle --mutants=5000 --workers=4

Prints, per file kind, how many mutants loaded and how many were refused with one InputError line, and every
failure (a crash, a timeout, another exception type, a multi-line message, a memory-limit hit) with the path of its
saved mutant. Exits with status 1 if there was any failure.
"""

import os
import sys
import tempfile

import click

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests import fuzzing  # noqa: E402


@click.command()
@click.option('--kinds', help='Comma-separated file kinds  [default: all]', metavar='LIST', default=None)
@click.option('--mutants', help='Mutants per file kind', metavar='INT', type=click.IntRange(min=1), default=20000,
              show_default=True)
@click.option('--seed', help='Mutation seed (the test uses 0)', metavar='INT', type=int, default=1, show_default=True)
@click.option('--workers', help='Worker processes', metavar='INT', type=click.IntRange(min=1), default=2,
              show_default=True)
@click.option('--outdir', help='Where failing mutants are saved  [default: a temporary folder]', metavar='DIR')
def main(kinds, mutants, seed, workers, outdir):
    """Fuzz the toolkit's file loaders."""
    names = kinds.split(',') if kinds else fuzzing.FUZZED
    unknown = [n for n in names if n not in fuzzing.KINDS]
    if unknown:
        raise click.BadParameter(f'unknown kind(s) {", ".join(unknown)}; known: {", ".join(fuzzing.KINDS)}',
                                 param_hint='--kinds')
    folder = outdir or tempfile.mkdtemp(prefix='fuzz-')
    total = mutants * len(names)

    def progress(done):
        if done % 1000 == 0 or done == total:
            print(f'{done}/{total} mutants', flush=True)
    report = fuzzing.run(names, mutants, folder, seed=seed, workers=workers, progress=progress)
    print(report.summary())
    print(f'{total} mutants tried, {len(report.failures)} failures; files in {folder}')
    sys.exit(1 if report.failures else 0)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
