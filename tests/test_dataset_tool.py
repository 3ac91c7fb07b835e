"""dataset_tool.py: sources, output layout, pixels (PIL LANCZOS + EDM crop rules), errors leave nothing behind."""

import gzip
import importlib
import io
import json
import os
import pathlib
import pickle
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import dataset_tool
from dnnlib import limits
from conftest import error_line
from test_dataset import png_header_only

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------
# Helpers (independent of the code under test).


def png_bytes(img):
    """What the EDM layout stores: PIL PNG, compress_level=0, mode L or RGB."""
    buf = io.BytesIO()
    PIL.Image.fromarray(img, 'L' if img.ndim == 2 else 'RGB').save(buf, format='png', compress_level=0, optimize=False)
    return buf.getvalue()


def lanczos(img, w, h):
    return np.array(PIL.Image.fromarray(img).resize((w, h), PIL.Image.Resampling.LANCZOS))


def name(i):
    return f'{i // 1000:05d}/img{i:08d}.png'


def save_image(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(img).save(path)


def rand_img(rng, h, w, c=3):
    shape = (h, w) if c == 1 else (h, w, c)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def make_cifar(dirpath, per_batch=3, seed=0):
    """A CIFAR-10 python tarball in the official format (5 pickled batches of uint8 rows), but tiny."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    batches = []
    for b in range(1, 6):
        x = rng.integers(0, 256, size=(per_batch, 3 * 32 * 32), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        batches.append({'batch_label': f'training batch {b} of 5', 'labels': y, 'data': x,
                        'filenames': [f'f{b}_{i}.png' for i in range(per_batch)]})
        images.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels += y
    path = write_cifar_tarball(os.path.join(dirpath, 'cifar-10-python.tar.gz'), batches)
    return path, np.concatenate(images), labels


def write_cifar_tarball(path, batches):
    """Pickle five batch dicts as data_batch_1..5 into a CIFAR-10 python tarball."""
    with tarfile.open(path, 'w:gz') as tar:
        for b, batch in enumerate(batches, start=1):
            data = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f'cifar-10-batches-py/data_batch_{b}')
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def run(args):
    result = CliRunner().invoke(dataset_tool.main, args, catch_exceptions=True)
    return result



def leftovers(parent):
    return sorted(n for n in os.listdir(parent) if '.tmp-' in n)

# ----------------------------------------------------------------------------
# Conversions.


def test_cifar10_tarball_to_zip(tmp_path):
    src, images, labels = make_cifar(tmp_path)
    dest = tmp_path / 'out' / 'cifar10-32x32.zip'  # Parent folder is created.
    result = run([f'--source={src}', f'--dest={dest}'])
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(dest) as z:
        infos = z.infolist()
        assert [i.filename for i in infos] == [name(i) for i in range(15)] + ['dataset.json']
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        meta = z.read('dataset.json')
        assert meta == json.dumps({'labels': [[name(i), labels[i]] for i in range(15)]}).encode()
        for i in range(15):
            data = z.read(name(i))
            assert data == png_bytes(images[i])  # Byte-identical uncompressed PNG.
            with PIL.Image.open(io.BytesIO(data)) as im:
                assert im.mode == 'RGB' and im.size == (32, 32)
                np.testing.assert_array_equal(np.array(im), images[i])
    assert leftovers(dest.parent) == []


def test_cifar10_rejects_wrong_format(tmp_path):
    batch = {'labels': [0], 'data': np.zeros((1, 100), np.uint8)}
    path = write_cifar_tarball(tmp_path / 'cifar-10-python.tar.gz', [batch] * 5)
    line = error_line(run([f'--source={path}', f'--dest={tmp_path / "o.zip"}']))
    assert '3072' in line
    assert not (tmp_path / 'o.zip').exists()


def test_cifar10_refuses_foreign_pickle_objects(tmp_path):
    batch = {'labels': [0], 'data': np.zeros((1, 3072), np.uint8), 'x': os.path.join}
    path = write_cifar_tarball(tmp_path / 'cifar-10-python.tar.gz', [batch] * 5)
    line = error_line(run([f'--source={path}', f'--dest={tmp_path / "o.zip"}']))
    assert 'unexpected object' in line
    assert not (tmp_path / 'o.zip').exists()


def test_folder_with_labels_center_crop(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / 'src'
    imgs = {
        'b/x.png': rand_img(rng, 30, 40),        # landscape RGB
        'a/y.jpg': None,                         # JPEG, decoded through PIL
        'a/z.png': rand_img(rng, 50, 36, c=1),   # portrait grayscale -> RGB
        'c.PNG': rand_img(rng, 64, 64),          # upper-case extension, at the root
    }
    for rel, img in imgs.items():
        if img is None:
            save_image(str(src / rel), rand_img(rng, 33, 33))
            with PIL.Image.open(src / rel) as im:
                imgs[rel] = np.array(im)
        else:
            save_image(str(src / rel), img)
    (src / 'notes.txt').write_text('not an image')
    (src / 'dataset.json').write_text(json.dumps({'labels': [['b/x.png', 3], ['a/y.jpg', 1], ['a/z.png', 0],
                                                             ['c.PNG', 2]]}))
    order = ['a/y.jpg', 'a/z.png', 'b/x.png', 'c.PNG']  # pathlib order
    assert [p.relative_to(src).as_posix() for p in sorted(src.rglob('*')) if
            p.suffix.lower() in ('.png', '.jpg')] == order

    dest = tmp_path / 'dest'
    dest.mkdir()  # An existing empty folder is fine.
    result = run([f'--source={src}', f'--dest={dest}', '--resolution=16x16', '--transform=center-crop'])
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(dest).as_posix()) for p in dest.rglob('*') if p.is_file()) == \
        ['00000/img00000000.png', '00000/img00000001.png', '00000/img00000002.png', '00000/img00000003.png',
         'dataset.json']
    meta = json.loads((dest / 'dataset.json').read_text())
    assert meta == {'labels': [[name(0), 1], [name(1), 0], [name(2), 3], [name(3), 2]]}
    for i, rel in enumerate(order):
        img = imgs[rel]
        h, w = img.shape[:2]
        s = min(h, w)
        crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        if crop.ndim == 2:
            crop = np.stack([crop] * 3, axis=2)
        expected = lanczos(np.ascontiguousarray(crop), 16, 16)
        data = (dest / name(i)).read_bytes()
        assert data == png_bytes(expected)
    assert leftovers(tmp_path) == []


def test_folder_labels_from_subfolders_and_pathlib_order(tmp_path):
    rng = np.random.default_rng(2)
    src = tmp_path / 'src'
    rels = ['a-b/1.png', 'a/2.png', 'root.png', 'a/sub/3.png']
    imgs = {rel: rand_img(rng, 8, 8, c=1) for rel in rels}
    for rel, img in imgs.items():
        save_image(str(src / rel), img)
    dest = tmp_path / 'd.zip'
    assert run([f'--source={src}', f'--dest={dest}']).exit_code == 0
    order = [p.relative_to(src).as_posix() for p in sorted(src.rglob('*.png'))]
    assert order == ['a/2.png', 'a/sub/3.png', 'a-b/1.png', 'root.png']
    classes = {'': 0, 'a': 1, 'a-b': 2}  # sorted top-level names, root files are ''
    with zipfile.ZipFile(dest) as z:
        meta = json.loads(z.read('dataset.json'))
        expected = [[name(i), classes[rel.split('/')[0] if '/' in rel else '']] for i, rel in enumerate(order)]
        assert meta == {'labels': expected}
        for i, rel in enumerate(order):
            assert z.read(name(i)) == png_bytes(imgs[rel])


def test_zip_source_resize_and_max_images(tmp_path):
    src, images, labels = make_cifar(tmp_path, per_batch=2)
    zpath = tmp_path / 'c.zip'
    assert run([f'--source={src}', f'--dest={zpath}']).exit_code == 0
    dest = tmp_path / 'folder'
    result = run([f'--source={zpath}', f'--dest={dest}', '--resolution=16,16', '--max-images=4'])
    assert result.exit_code == 0, result.output
    assert json.loads((dest / 'dataset.json').read_text()) == {'labels': [[name(i), labels[i]] for i in range(4)]}
    for i in range(4):
        assert (dest / name(i)).read_bytes() == png_bytes(lanczos(images[i], 16, 16))
    assert not (dest / name(4)).exists()


def test_center_crop_wide_skips_small_images(tmp_path):
    rng = np.random.default_rng(3)
    src = tmp_path / 'src'
    imgs = [rand_img(rng, 30, 40), rand_img(rng, 30, 12), rand_img(rng, 40, 64, c=1)]  # middle: too narrow
    for i, img in enumerate(imgs):
        save_image(str(src / f'{i}.png'), img)
    dest = tmp_path / 'w.zip'
    result = run([f'--source={src}', f'--dest={dest}', '--resolution=16x8', '--transform=center-crop-wide'])
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(dest) as z:
        assert z.namelist() == [name(0), name(2), 'dataset.json']  # gap: the index keeps counting
        assert json.loads(z.read('dataset.json')) == {'labels': None}
        for i in (0, 2):
            img = imgs[i]
            h, w = img.shape[:2]
            ch = int(np.round(16 * h / w))
            crop = img[(h - ch) // 2:(h - ch) // 2 + ch]
            if crop.ndim == 2:
                crop = np.stack([crop] * 3, axis=2)
            canvas = np.zeros((16, 16, 3), np.uint8)
            canvas[4:12] = lanczos(np.ascontiguousarray(crop), 16, 8)
            assert z.read(name(i)) == png_bytes(canvas)


def test_mnist(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    y = np.array([7, 0, 9], np.uint8)
    with gzip.open(tmp_path / 'train-images-idx3-ubyte.gz', 'wb') as f:
        f.write(np.array([2051, 3, 28, 28], '>u4').tobytes() + x.tobytes())
    with gzip.open(tmp_path / 'train-labels-idx1-ubyte.gz', 'wb') as f:
        f.write(np.array([2049, 3], '>u4').tobytes() + y.tobytes())
    dest = tmp_path / 'mnist.zip'
    assert run([f'--source={tmp_path / "train-images-idx3-ubyte.gz"}', f'--dest={dest}']).exit_code == 0
    with zipfile.ZipFile(dest) as z:
        assert json.loads(z.read('dataset.json')) == {'labels': [[name(i), int(y[i])] for i in range(3)]}
        for i in range(3):
            padded = np.zeros((32, 32), np.uint8)
            padded[2:30, 2:30] = x[i]
            assert z.read(name(i)) == png_bytes(padded)


def test_palette_images_become_rgb(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    rgb = np.random.default_rng(5).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    PIL.Image.fromarray(rgb).quantize(16).save(src / 'p.png')
    with PIL.Image.open(src / 'p.png') as im:
        expected = np.array(im.convert('RGB'))
    dest = tmp_path / 'p.zip'
    assert run([f'--source={src}', f'--dest={dest}']).exit_code == 0
    with zipfile.ZipFile(dest) as z:
        assert z.read(name(0)) == png_bytes(expected)

def test_cmyk_jpeg_becomes_rgb_with_center_crop(tmp_path):
    # ImageNet's training set holds a few CMYK JPEGs; the published ImageNet command must get past them.
    src = tmp_path / 'src'
    src.mkdir()
    rng = np.random.default_rng(6)
    PIL.Image.fromarray(rand_img(rng, 24, 32)).save(src / 'a.jpg')
    PIL.Image.fromarray(rand_img(rng, 24, 32)).convert('CMYK').save(src / 'b.jpg')
    dest = tmp_path / 'out.zip'
    result = run([f'--source={src}', f'--dest={dest}', '--resolution=16x16', '--transform=center-crop'])
    assert result.exit_code == 0, result.output
    with PIL.Image.open(src / 'b.jpg') as im:
        rgb = np.array(im.convert('RGB'))
    crop = rgb[:, 4:28]
    expected = np.array(PIL.Image.fromarray(crop).resize((16, 16), PIL.Image.LANCZOS))
    with zipfile.ZipFile(dest) as z:
        assert z.read(name(1)) == png_bytes(expected)


# ----------------------------------------------------------------------------
# Errors: one line, nothing left behind.


def _folder(tmp_path, imgs, corrupt=None):
    src = tmp_path / 'src'
    for i, img in enumerate(imgs):
        save_image(str(src / f'{i}.png'), img)
    if corrupt is not None:
        (src / corrupt).write_bytes(b'\x89PNG\r\n\x1a\n not really a png')
    return src


ERROR_CASES = {
    'corrupt': (lambda r: [rand_img(r, 8, 8)] * 3, '3.png', [], 'cannot read image'),
    'mixed-sizes': (lambda r: [rand_img(r, 8, 8), rand_img(r, 8, 8), rand_img(r, 16, 16)], None, [],
                    'differs in width 16 (first image: 8), height 16 (first image: 8); use --resolution'),
    'non-square': (lambda r: [rand_img(r, 8, 16)], None, [], 'must be square'),
    'not-power-of-two': (lambda r: [rand_img(r, 12, 12)], None, [], 'not a power of two'),
    'channels': (lambda r: [rand_img(r, 8, 8), rand_img(r, 8, 8, c=1)], None, [],
                 'channels 1 (first image: 3); use --transform=center-crop'),
    'transform-without-resolution': (lambda r: [rand_img(r, 8, 8)], None, ['--transform=center-crop'],
                                     'needs --resolution'),
    'bad-resolution': (lambda r: [rand_img(r, 8, 8)], None, ['--resolution=64'], 'not a resolution'),
}


@pytest.mark.parametrize('case', sorted(ERROR_CASES))
@pytest.mark.parametrize('kind', ['zip', 'folder'])
def test_errors_leave_nothing(tmp_path, case, kind):
    make, corrupt, extra, message = ERROR_CASES[case]
    src = _folder(tmp_path, make(np.random.default_rng(6)), corrupt)
    dest = tmp_path / 'new' / ('d.zip' if kind == 'zip' else 'd')
    line = error_line(run([f'--source={src}', f'--dest={dest}'] + extra))
    assert message in line
    if case == 'corrupt':
        assert str(src / '3.png') in line  # names the file
    assert not (tmp_path / 'new').exists()  # neither the destination nor the folder made for it
    assert leftovers(tmp_path) == []


def test_dest_already_holding_data(tmp_path):
    src = _folder(tmp_path, [np.zeros((8, 8, 3), np.uint8)])
    folder = tmp_path / 'full'
    folder.mkdir()
    (folder / 'keep.txt').write_text('x')
    assert 'already holds data' in error_line(run([f'--source={src}', f'--dest={folder}']))
    assert os.listdir(folder) == ['keep.txt']
    zpath = tmp_path / 'old.zip'
    zpath.write_bytes(b'old data')
    assert 'already exists' in error_line(run([f'--source={src}', f'--dest={zpath}']))
    assert zpath.read_bytes() == b'old data'
    assert leftovers(tmp_path) == []


def test_unknown_and_missing_source(tmp_path):
    other = tmp_path / 'images.tar.gz'
    other.write_bytes(b'x')
    assert 'unknown source type' in error_line(run([f'--source={other}', f'--dest={tmp_path / "a.zip"}']))
    assert 'no such file' in error_line(run([f'--source={tmp_path / "nope"}', f'--dest={tmp_path / "a.zip"}']))
    assert not (tmp_path / 'a.zip').exists()


def test_lmdb_without_optional_packages(tmp_path):
    try:
        import cv2  # noqa: F401 pylint: disable=unused-import,import-outside-toplevel
        import lmdb  # noqa: F401 pylint: disable=unused-import,import-outside-toplevel
        pytest.skip('lmdb and cv2 are installed')
    except ImportError:
        pass
    src = tmp_path / 'bedroom_train_lmdb'
    src.mkdir()
    line = error_line(run([f'--source={src}', f'--dest={tmp_path / "l.zip"}']))
    assert 'pip install lmdb opencv-python' in line
    assert not (tmp_path / 'l.zip').exists()


@pytest.mark.slow
def test_cli_subprocess_error(tmp_path):
    src = _folder(tmp_path, [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 16, 3), np.uint8)])
    res = subprocess.run([sys.executable, 'dataset_tool.py', f'--source={src}', f'--dest={tmp_path / "x.zip"}'],
                         cwd=ROOT, capture_output=True, text=True, check=False)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith('Error: ')
    assert 'Traceback' not in res.stderr
    assert not (tmp_path / 'x.zip').exists()


def test_convert_dataset_importable(tmp_path):
    src = _folder(tmp_path, [np.full((4, 4, 3), 9, np.uint8)] * 2)
    out = dataset_tool.convert_dataset(str(src), str(tmp_path / 'o.zip'), resolution='8x8', progress=False)
    assert out == dict(written=2, skipped=0)
    assert pathlib.Path(tmp_path / 'o.zip').is_file()


# ----------------------------------------------------------------------------
# Hostile sources: no crash, no code, bounded memory, one line.


class _Reduce:
    """Pickles as `fn(*args)` followed by BUILD `state` (what a hand-written hostile pickle does)."""

    def __init__(self, fn, args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def _object_dtype_state(itemsize):
    # numpy's dtype state (version, byte order, subarray, names, fields, itemsize, alignment, flags): one field
    # of object type. A scalar built from file bytes with this dtype dereferences pointers taken from the file.
    return (3, '|', None, ('f',), {'f': (np.dtype('O'), 0)}, itemsize, 1, 0x3F)


def _numpy_core(name):
    try:
        return importlib.import_module(f'numpy._core.{name}')
    except ImportError:  # numpy < 2
        return importlib.import_module(f'numpy.core.{name}')


def _scalar(dtype, data):
    return _Reduce(_numpy_core('multiarray').scalar, (dtype, data))


HOSTILE_CIFAR = {
    # The interpreter crash: a void dtype given object fields through BUILD, then a scalar from 8 chosen bytes.
    'object fields through BUILD': (_scalar(_Reduce(np.dtype, ('V8', False, True), _object_dtype_state(8)),
                                            b'\x41' * 8), "numpy dtype 'V8' is not a plain numeric type"),
    'state change on a numeric dtype': (_scalar(_Reduce(np.dtype, ('u8', False, True), (3, '<', None, None, None,
                                                                                         16, 8, 0)),
                                                b'\x41' * 16), "numpy dtype '<u8' with a changed state"),
    'object dtype': (_scalar(_Reduce(np.dtype, ('O8', False, True)), b'\x41' * 8), "numpy dtype 'O8'"),
    'structured dtype code': (_Reduce(np.dtype, ('i4,i4', False, True)), 'not a plain numeric type code'),
    'scalar from too few bytes': (_scalar(np.dtype('f8'), b'\x00' * 3), 'from 3 bytes (needs 8)'),
    'array bytes do not match the shape': (
        _Reduce(_numpy_core('numeric')._frombuffer, (b'\x00' * 10, np.dtype('u1'), (1, 3072), 'C')),
        'from 10 bytes (needs 3072)'),
    'other codec': (_Reduce(__import__('_codecs').encode, ('x', 'rot13')), 'unexpected use of _codecs.encode'),
}


@pytest.mark.parametrize('case', sorted(HOSTILE_CIFAR))
def test_cifar10_hostile_numpy_objects(tmp_path, case):
    payload, message = HOSTILE_CIFAR[case]
    batch = {'labels': [0], 'data': np.zeros((1, 3072), np.uint8), 'extra': payload}
    path = write_cifar_tarball(tmp_path / 'cifar-10-python.tar.gz', [batch] * 5)
    line = error_line(run([f'--source={path}', f'--dest={tmp_path / "o.zip"}']))
    assert message in line
    assert not (tmp_path / 'o.zip').exists()


def test_cifar10_numpy_pickle_protocols(tmp_path):
    # Arrays and scalars as numpy pickles them at protocol 2 (Python 2 style) and 5 (out-of-band capable).
    x = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    for protocol in (2, 5):
        batch = {'labels': [np.int64(3), 7], 'data': x}
        path = tmp_path / f'p{protocol}' / 'cifar-10-python.tar.gz'
        path.parent.mkdir()
        with tarfile.open(path, 'w:gz') as tar:
            for b in range(1, 6):
                data = pickle.dumps(batch, protocol=protocol)
                info = tarfile.TarInfo(f'cifar-10-batches-py/data_batch_{b}')
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        count, images = dataset_tool.open_cifar10(str(path))
        items = list(images)
        assert count == 10 and [label for _, _, label in items] == [3, 7] * 5
        np.testing.assert_array_equal(items[1][1], x[1].reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar10_inflating_batches_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, 'FLOOR', 1 << 20)
    batch = {'labels': [0] * 400, 'data': np.zeros((400, 3072), np.uint8)}  # 1.2 MB each, compresses 1000x.
    path = write_cifar_tarball(tmp_path / 'cifar-10-python.tar.gz', [batch] * 5)
    line = error_line(run([f'--source={path}', f'--dest={tmp_path / "o.zip"}']))
    assert 'the uncompressed batches would take' in line and 'over the limit of 1.0 MiB' in line


def test_cifar10_too_many_pickle_operations(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_tool, 'CIFAR_MAX_PICKLE_OPS', 1000)
    batch = {'labels': [0], 'data': np.zeros((1, 3072), np.uint8), 'many': [[] for _ in range(1000)]}
    path = write_cifar_tarball(tmp_path / 'cifar-10-python.tar.gz', [batch] * 5)
    assert 'more than 1000 operations' in error_line(run([f'--source={path}', f'--dest={tmp_path / "o.zip"}']))


def test_mnist_gzip_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, 'FLOOR', 1 << 20)
    with gzip.open(tmp_path / 'train-images-idx3-ubyte.gz', 'wb') as f:
        f.write(np.array([2051, 3000, 28, 28], '>u4').tobytes() + bytes(3000 * 28 * 28))
    with gzip.open(tmp_path / 'train-labels-idx1-ubyte.gz', 'wb') as f:
        f.write(np.array([2049, 3000], '>u4').tobytes() + bytes(3000))
    line = error_line(run([f'--source={tmp_path / "train-images-idx3-ubyte.gz"}', f'--dest={tmp_path / "m.zip"}']))
    assert 'train-images-idx3-ubyte.gz: the uncompressed file would take' in line and 'over the limit' in line


def test_zip_source_bomb_and_huge_image_header(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, 'FLOOR', 1 << 20)
    zpath = tmp_path / 'src.zip'
    with zipfile.ZipFile(zpath, 'w', compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr('a.png', png_bytes(np.zeros((8, 8, 3), np.uint8)))
        z.writestr('dataset.json', b' ' * (4 << 20))
    line = error_line(run([f'--source={zpath}', f'--dest={tmp_path / "o.zip"}']))
    assert 'dataset.json: the uncompressed entry would take 4.0 MiB' in line
    folder = tmp_path / 'big'
    folder.mkdir()
    (folder / 'a.png').write_bytes(png_header_only(1000, 1000))
    line = error_line(run([f'--source={folder}', f'--dest={tmp_path / "b.zip"}']))
    assert 'a.png: the decoded image would take 2.9 MiB from 65 bytes stored, over the limit of 1.0 MiB' in line
    assert not (tmp_path / 'o.zip').exists() and not (tmp_path / 'b.zip').exists()


@pytest.mark.parametrize('text,message', [('[1, 2]', 'expected an object'),
                                          ('{"labels": [["a.png", 1000000000000]]}', 'expected a class index in')])
def test_source_dataset_json_checked(tmp_path, text, message):
    src = _folder(tmp_path, [np.zeros((8, 8, 3), np.uint8)])
    (src / 'dataset.json').write_text(text)
    line = error_line(run([f'--source={src}', f'--dest={tmp_path / "o.zip"}']))
    assert message in line and 'dataset.json' in line
    assert not (tmp_path / 'o.zip').exists()


def test_control_characters_in_source_names_are_escaped(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'x\x1b[2K\rDone.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
    result = run([f'--source={src}', f'--dest={tmp_path / "o.zip"}'])
    line = error_line(result)
    assert '\x1b' not in result.output and '\\x1b[2K\\rDone.png' in line

# ----------------------------------------------------------------------------
# Usability.


def test_source_without_images_writes_nothing(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'readme.txt').write_text('no images here')
    for dest in (tmp_path / 'out' / 'e.zip', tmp_path / 'out' / 'folder'):
        assert 'no images found; nothing was written' in error_line(run([f'--source={src}', f'--dest={dest}']))
    assert not (tmp_path / 'out').exists()
    rng = np.random.default_rng(7)
    save_image(str(src / 'narrow.png'), rand_img(rng, 30, 12))
    line = error_line(run([f'--source={src}', f'--dest={tmp_path / "out" / "w.zip"}', '--resolution=16x8',
                           '--transform=center-crop-wide']))
    assert 'all 1 images are too small for --transform=center-crop-wide' in line
    assert not (tmp_path / 'out').exists() and leftovers(tmp_path) == []


def test_non_square_wording_names_only_what_was_done(tmp_path):
    src = _folder(tmp_path, [rand_img(np.random.default_rng(8), 8, 16)])
    assert 'image is 16x8, but images must be square' in error_line(run([f'--source={src}',
                                                                         f'--dest={tmp_path / "a.zip"}']))
    line = error_line(run([f'--source={src}', f'--dest={tmp_path / "b.zip"}', '--resolution=16x8']))
    assert 'image is 16x8 after resizing, but' in line


def test_unwritable_destination_wording(tmp_path, monkeypatch):
    src = _folder(tmp_path, [np.zeros((8, 8, 3), np.uint8)])

    def refuse(*args, **kwargs):
        raise FileNotFoundError(2, 'No such file or directory')
    monkeypatch.setattr(zipfile, 'ZipFile', refuse)
    line = error_line(run([f'--source={src}', f'--dest={tmp_path / "x.zip"}']))
    assert f'--dest {tmp_path / "x.zip"}: cannot create files in {tmp_path} (No such file or directory)' in line


def test_refuses_torchrun(tmp_path, monkeypatch):
    src = _folder(tmp_path, [np.zeros((8, 8, 3), np.uint8)])
    for rank in ('0', '1'):
        monkeypatch.setenv('WORLD_SIZE', '2')
        monkeypatch.setenv('RANK', rank)
        result = CliRunner().invoke(dataset_tool.main, [f'--source={src}', f'--dest={tmp_path / "o.zip"}'])
        assert result.exit_code == 2
        errors = [line for line in result.output.splitlines() if line.startswith('Error')]
        assert errors == (['Error: dataset_tool.py runs as one process; start it with python, not torchrun']
                          if rank == '0' else [])
    assert not (tmp_path / 'o.zip').exists()
