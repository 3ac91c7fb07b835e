"""How much one input file may make the process allocate, measured against what the file really holds.

A small file must not be able to demand a large allocation: a compressed archive member (zip, gzip, tar.gz) that
inflates a thousandfold, a zip entry that declares a terabyte, an image header that announces a gigapixel. Every
reader checks the size it is about to produce against `expansion_limit(stored bytes)`: at most `EXPANSION` times
the bytes that the file really stores for it, and never less than `FLOOR`, so ordinary files (and real compression
ratios of images and JSON) always pass. A violation raises `dnnlib.util.InputError` naming the file and the limit.
"""

import zipfile

from .util import InputError, printable

EXPANSION = 64          # Bytes one stored byte may become (deflate alone reaches about 1000).
FLOOR = 64 << 20        # 64 MiB: any file may produce this much.


def expansion_limit(stored):
    """The most bytes that `stored` bytes of a file may become."""
    return max(FLOOR, EXPANSION * max(int(stored), 0))


def _size(n):
    return f'{n / (1 << 20):.1f} MiB' if n >= 1 << 20 else f'{n} bytes'


def check_expansion(where, what, stored, produced):
    """Raise InputError if `produced` bytes (of `what`, e.g. 'decoded pixels') exceed the limit for `stored`."""
    limit = expansion_limit(stored)
    if produced > limit:
        raise InputError(f'{printable(where)}: {what} would take {_size(produced)} from {_size(stored)} stored, '
                         f'over the limit of {_size(limit)} ({EXPANSION}x the stored size, at least '
                         f'{_size(FLOOR)})')


def check_zip_member(where, info, archive_size):
    """Declared sizes of a zip entry: the compressed bytes must lie inside the archive, and the uncompressed size
    must be within the expansion limit of the compressed bytes (a zip bomb or a forged size is refused)."""
    if info.compress_size > archive_size:
        raise InputError(f'{printable(where)}: the entry declares {_size(info.compress_size)} of data, more than the '
                         f'whole archive ({_size(archive_size)})')
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise InputError(f'{printable(where)}: stored entry declares {info.file_size} bytes but holds '
                         f'{info.compress_size}')
    check_expansion(where, 'the uncompressed entry', info.compress_size, info.file_size)


def read_zip_member(archive, name, where, archive_size):
    """The bytes of entry `name` of an open ZipFile, after `check_zip_member`."""
    info = archive.getinfo(name)
    check_zip_member(where, info, archive_size)
    with archive.open(info) as f:
        return f.read()


def read_limited(file, where, what, stored):
    """Read a stream to its end (a gzip or tar member), refusing to produce more than `expansion_limit(stored)`."""
    limit = expansion_limit(stored)
    data = file.read(limit + 1)
    if len(data) > limit:
        check_expansion(where, what, stored, len(data))
    return data
