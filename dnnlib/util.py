"""EasyDict, construction of objects by dotted name, and `open_url` with an on-disk download cache."""

import contextlib
import glob
import hashlib
import importlib
import io
import os
import re
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
    """Cache location: set_cache_dir() > $DNNLIB_CACHE_DIR > ~/.cache/dnnlib > <tmp>/.cache/dnnlib."""
    if _cache_dir is not None:
        return os.path.join(_cache_dir, *paths)
    if 'DNNLIB_CACHE_DIR' in os.environ:
        return os.path.join(os.environ['DNNLIB_CACHE_DIR'], *paths)
    for var in ('HOME', 'USERPROFILE'):
        if var in os.environ:
            return os.path.join(os.environ[var], '.cache', 'dnnlib', *paths)
    return os.path.join(tempfile.gettempdir(), '.cache', 'dnnlib', *paths)


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
    $DNNLIB_CACHE_DIR) and written atomically. With `return_filename=True` the local file name is returned
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
    url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    if cache:
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
