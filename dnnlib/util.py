"""EasyDict, construction of objects by dotted name, and `open_url` with an on-disk download cache."""

import contextlib
import glob
import hashlib
import importlib
import io
import os
import re
import stat
import tempfile
import time
import urllib.parse
import uuid

# ----------------------------------------------------------------------------


class EasyDict(dict):
    """A dict whose items are also attributes (`d.key`); a missing attribute raises AttributeError."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]

# ----------------------------------------------------------------------------
# Files.


@contextlib.contextmanager
def atomic_path(path, makedirs=True):
    """Yield a temporary file name next to `path`; rename it to `path` if the block succeeds, else remove it.

    Readers never see a half-written file, and a failed or interrupted write leaves nothing behind.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if makedirs:
        os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}')
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

# ----------------------------------------------------------------------------
# Construction by name.


def get_obj_by_name(name):
    """Resolve a dotted name such as 'training.networks.EDMPrecond' (longest importable module prefix wins)."""
    if name.startswith('np.'):
        name = 'numpy.' + name[3:]
    parts = name.split('.')
    for split in range(len(parts), 0, -1):
        module_name = '.'.join(parts[:split])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and not module_name.startswith(e.name):
                raise  # The module exists but one of *its* imports is missing.
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return obj
    raise ImportError(f'cannot find "{name}"')


def construct_class_by_name(*args, class_name=None, **kwargs):
    """Call the class (or function) named by `class_name` with the remaining arguments."""
    assert class_name is not None
    func = get_obj_by_name(class_name)
    if not callable(func):
        raise TypeError(f'"{class_name}" is not callable')
    return func(*args, **kwargs)

# ----------------------------------------------------------------------------
# Cache directory and URLs.

_cache_dir = None


def set_cache_dir(path):
    global _cache_dir
    _cache_dir = path


def make_cache_dir_path(*paths):
    """Cache location: set_cache_dir() > $DNNLIB_CACHE_DIR > ~/.cache/dnnlib > <tmp>/dnnlib-cache-<user id> (a
    folder of this user's own, never the shared temporary directory itself; see `private_dir`)."""
    if _cache_dir is not None:
        return os.path.join(_cache_dir, *paths)
    if 'DNNLIB_CACHE_DIR' in os.environ:
        return os.path.join(os.environ['DNNLIB_CACHE_DIR'], *paths)
    for var in ('HOME', 'USERPROFILE'):
        if var in os.environ:
            return os.path.join(os.environ[var], '.cache', 'dnnlib', *paths)
    user = os.getuid() if hasattr(os, 'getuid') else os.environ.get('USERNAME', 'user')
    return os.path.join(tempfile.gettempdir(), f'dnnlib-cache-{user}', *paths)


def private_dir(path):
    """Create the cache folder `path` (mode 0700) if needed and check that no other user can plant files in it:
    a real folder (not a symbolic link), owned by this user, not writable by group or others. Returns `path`;
    raises InputError otherwise (POSIX only)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.name != 'posix':
        return path
    st = os.lstat(path)
    fix = f'set DNNLIB_CACHE_DIR to a folder of your own, or fix it with chmod go-w {printable(path)}'
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise InputError(f'cache folder {printable(path)} is a symbolic link or not a folder; refusing to use it; '
                         f'{fix}')
    if st.st_uid != os.getuid():
        raise InputError(f'cache folder {printable(path)} belongs to another user; refusing to use it; {fix}')
    if st.st_mode & 0o022:
        raise InputError(f'cache folder {printable(path)} can be written by other users (mode '
                         f'{stat.S_IMODE(st.st_mode):o}); refusing to use it; {fix}')
    return path


def is_url(obj, allow_file_urls=False):
    """True for http(s):// URLs (and file:// when allowed)."""
    if not isinstance(obj, str) or '://' not in obj:
        return False
    scheme = obj.split('://', 1)[0].lower()
    return scheme in ('http', 'https') or (allow_file_urls and scheme == 'file')


class InputError(ValueError):
    """A file or value handed to the toolkit cannot be used. The message is one line that names the file (or
    option) and the problem, with untrusted text escaped by `printable`; scripts print it as their error line."""


def printable(text, limit=200):
    """Untrusted text (a name read from a file, a path) safe to print on one terminal line: control characters,
    escape sequences and non-printable code points are shown escaped (repr style), and long text is cut."""
    text = str(text)
    out = ''.join(c if c.isprintable() else c.encode('unicode_escape').decode('ascii') for c in text)
    return out if len(out) <= limit else out[:limit] + '...'


class DownloadError(IOError):
    """A URL could not be fetched (offline, not found, ...). The message is one line."""


def file_url_to_path(url):
    parsed = urllib.parse.urlparse(url)
    path = urllib.parse.unquote(parsed.path)
    if parsed.netloc not in ('', 'localhost'):
        path = '//' + parsed.netloc + path
    if re.match(r'^/[a-zA-Z]:', path):  # file:///C:/... on Windows.
        path = path[1:]
    return path


def _cache_file_name(url, headers=None):
    name = None
    disposition = (headers or {}).get('Content-Disposition', '')
    match = re.search(r'filename="?([^";]+)"?', disposition)
    if match:
        name = match.group(1)
    if not name:
        name = urllib.parse.urlparse(url).path.rsplit('/', 1)[-1] or 'download'
    name = re.sub(r'[^0-9a-zA-Z\-._]', '_', name)[:128]
    return hashlib.md5(url.encode('utf-8')).hexdigest() + '_' + name


def open_url(url, cache_dir=None, num_attempts=5, verbose=True, return_filename=False, cache=True, timeout=60):
    """Open a local path, a file:// URL or an http(s) URL as a binary file object.

    Downloads are cached under `cache_dir` (default: make_cache_dir_path('downloads'), overridable with
    $DNNLIB_CACHE_DIR; a private folder, see `private_dir`) and written atomically. With `return_filename=True`
    the local file name is returned
    instead (requires a path, a file:// URL or `cache=True`).
    """
    assert num_attempts >= 1
    if not isinstance(url, str) or not url:
        raise ValueError('open_url() needs a non-empty path or URL')

    if not re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*://', url):
        if not os.path.isfile(url):
            raise FileNotFoundError(f'{url}: no such file')
        return url if return_filename else open(url, 'rb')
    if url.lower().startswith('file://'):
        path = file_url_to_path(url)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{url}: no such file')
        return path if return_filename else open(path, 'rb')
    if not is_url(url):
        raise ValueError(f'{url}: unsupported URL scheme (use a local path, file://, http:// or https://)')

    if cache_dir is None:
        cache_dir = make_cache_dir_path('downloads')
        if cache:
            private_dir(make_cache_dir_path())
    url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    if cache:
        private_dir(cache_dir)
        hits = glob.glob(os.path.join(glob.escape(cache_dir), url_md5 + '_*'))
        if len(hits) == 1:
            return hits[0] if return_filename else open(hits[0], 'rb')
    elif return_filename:
        raise ValueError('open_url(return_filename=True) needs cache=True for remote URLs')

    data, headers = _download(url, num_attempts=num_attempts, verbose=verbose, timeout=timeout)
    if cache:
        path = os.path.join(cache_dir, _cache_file_name(url, headers))
        with atomic_path(path) as tmp, open(tmp, 'wb') as f:
            f.write(data)
        if return_filename:
            return path
    return io.BytesIO(data)


def open_trusted_url(url, sha256=None, num_attempts=5, verbose=True, timeout=60):
    """The bytes of a file that will be run as code (e.g. a pickle from a fixed official URL), verified.

    A download is cached in the private cache folder (`private_dir`) together with a record of its SHA-256
    (`<file>.sha256`). A cached copy is used only if its hash equals that record (or `sha256`, the expected hex
    digest, if given); otherwise the file is downloaded again. A download whose hash differs from `sha256` is
    refused (DownloadError). Local paths and file:// URLs are read directly, and checked against `sha256` if given.
    The hash is computed on the returned bytes themselves.
    """
    expected = sha256.lower() if sha256 else None
    if expected is not None and not re.fullmatch(r'[0-9a-f]{64}', expected):
        raise InputError(f'{printable(sha256)} is not a SHA-256 digest (64 hexadecimal digits)')
    if not is_url(url):
        with open_url(url) as f:
            data = f.read()
        digest = hashlib.sha256(data).hexdigest()
        if expected is not None and digest != expected:
            raise InputError(f'{printable(url)} has SHA-256 {digest}, expected {expected}')
        return data
    private_dir(make_cache_dir_path())
    cache_dir = private_dir(make_cache_dir_path('downloads'))
    url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    for path in glob.glob(os.path.join(glob.escape(cache_dir), url_md5 + '_*')):
        if path.endswith('.sha256'):
            continue
        try:
            with open(path + '.sha256', encoding='ascii') as f:
                record = f.read().strip()
            with open(path, 'rb') as f:
                data = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest == (expected or record) and digest == record:
            return data
        if verbose:
            print(f'Cached copy of {url} does not match the SHA-256 recorded when it was downloaded; '
                  'downloading it again.', flush=True)
    data, headers = _download(url, num_attempts=num_attempts, verbose=verbose, timeout=timeout)
    digest = hashlib.sha256(data).hexdigest()
    if expected is not None and digest != expected:
        raise DownloadError(f'downloaded {url} has SHA-256 {digest}, expected {expected}; not used')
    path = os.path.join(cache_dir, _cache_file_name(url, headers))
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        f.write(data)
    with atomic_path(path + '.sha256') as tmp, open(tmp, 'w', encoding='ascii') as f:
        f.write(digest + '\n')
    return data


def _download(url, num_attempts, verbose, timeout):
    import requests
    last_error = None
    for attempt in range(num_attempts):
        try:
            with requests.Session() as session:
                if verbose:
                    print(f'Downloading {url} ...', end='', flush=True)
                with session.get(url, timeout=timeout) as res:
                    res.raise_for_status()
                    if len(res.content) == 0:
                        raise IOError('no data received')
                    if verbose:
                        print(' done', flush=True)
                    return res.content, dict(res.headers)
        except KeyboardInterrupt:
            raise
        except requests.HTTPError as e:  # A definite answer from the server: do not retry.
            if verbose:
                print(' failed', flush=True)
            raise DownloadError(f'cannot download {url}: HTTP {e.response.status_code}; '
                                'pass a local file path instead') from None
        except Exception as e:  # pylint: disable=broad-except
            last_error = e
            if verbose:
                print(' failed', flush=True)
            if attempt + 1 < num_attempts:
                time.sleep(min(0.2 * 2 ** attempt, 1.0))
    reason = type(last_error).__name__
    raise DownloadError(f'cannot download {url} ({reason}: no network access?); '
                        'download it elsewhere and pass the local file path instead') from None
