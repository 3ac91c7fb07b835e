import http.server
import os
import threading

import pytest

import dnnlib
from dnnlib import cli, util


def test_easydict_attributes():
    d = dnnlib.EasyDict(a=1)
    d.b = 2
    assert d == {'a': 1, 'b': 2} and d.a == 1
    del d.a
    assert 'a' not in d
    with pytest.raises(AttributeError):
        _ = d.missing


def test_construct_class_by_name():
    d = dnnlib.util.construct_class_by_name(class_name='dnnlib.EasyDict', x=3)
    assert isinstance(d, dnnlib.EasyDict) and d.x == 3
    assert util.get_obj_by_name('np.float64') is __import__('numpy').float64
    assert util.get_obj_by_name('dnnlib.cli.parse_int_list')('1-3') == [1, 2, 3]
    with pytest.raises(ImportError):
        util.get_obj_by_name('no_such_module_xyz.Thing')


def test_parse_int_list():
    assert cli.parse_int_list('0-3,7, 9-10') == [0, 1, 2, 3, 7, 9, 10]
    assert cli.parse_int_list('"0-2"') == [0, 1, 2]
    for bad in ('', 'a', '3-1', '1,,2', '-1'):
        with pytest.raises(ValueError):
            cli.parse_int_list(bad)


def test_one_line():
    assert cli.one_line(ValueError('bad  value\n  details\n')) == 'bad value'
    assert cli.one_line(RuntimeError('\n\n  first\tline \nsecond')) == 'first line'
    assert cli.one_line(OSError()) == 'OSError'
    assert cli.one_line(KeyError('k')) == "'k'"
    assert cli.one_line('plain\ntext') == 'plain'


def test_open_url_local_and_file_url(tmp_path):
    path = tmp_path / 'a b.bin'
    path.write_bytes(b'hello')
    with util.open_url(str(path)) as f:
        assert f.read() == b'hello'
    with util.open_url('file://' + str(path).replace(' ', '%20')) as f:
        assert f.read() == b'hello'
    with pytest.raises(FileNotFoundError, match='no such file'):
        util.open_url(str(tmp_path / 'missing.pkl'))


class _Handler(http.server.BaseHTTPRequestHandler):
    payload = b'0123456789' * 100
    hits = 0

    def do_GET(self):
        type(self).hits += 1
        if self.path.endswith('/missing.pkl'):
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header('Content-Length', str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()


def test_open_url_http_with_cache(http_server, tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    _Handler.hits = 0
    url = http_server + '/models/net.pkl'
    with util.open_url(url, verbose=False) as f:
        assert f.read() == _Handler.payload
    with util.open_url(url, verbose=False) as f:  # Second time: from the cache, no request.
        assert f.read() == _Handler.payload
    assert _Handler.hits == 1
    cached = os.listdir(tmp_path / 'cache' / 'downloads')
    assert len(cached) == 1 and cached[0].endswith('_net.pkl')
    assert util.open_url(url, return_filename=True, verbose=False).startswith(str(tmp_path / 'cache'))


def test_open_url_errors_are_one_line(http_server, tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    with pytest.raises(util.DownloadError, match='HTTP 404') as e:
        util.open_url(http_server + '/missing.pkl', verbose=False)
    assert '\n' not in str(e.value) and 'local file' in str(e.value)
    # A port nobody listens on behaves like being offline.
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    with pytest.raises(util.DownloadError, match='local file path') as e:
        util.open_url(f'http://127.0.0.1:{port}/net.pkl', num_attempts=2, verbose=False)
    assert '\n' not in str(e.value)
    assert not os.path.exists(tmp_path / 'cache' / 'downloads') or not os.listdir(tmp_path / 'cache' / 'downloads')


def test_atomic_path_renames_on_success_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / 'sub' / 'out.bin'
    with util.atomic_path(str(target)) as tmp:
        assert not target.exists()
        with open(tmp, 'wb') as f:
            f.write(b'data')
    assert target.read_bytes() == b'data'
    with pytest.raises(RuntimeError):
        with util.atomic_path(str(target)) as tmp:
            with open(tmp, 'wb') as f:
                f.write(b'half')
            raise RuntimeError('interrupted')
    assert target.read_bytes() == b'data' and os.listdir(tmp_path / 'sub') == ['out.bin']


def test_printable_escapes_terminal_control():
    from dnnlib.util import printable
    text = printable('net\x1b[2K\rDone.\x07 \u202e ok')
    assert text == 'net\\x1b[2K\\rDone.\\x07 \\u202e ok'
    assert all(c.isprintable() for c in text)
    assert printable('é ü 日本') == 'é ü 日本'
    assert printable('x' * 500).endswith('...') and len(printable('x' * 500)) == 203
