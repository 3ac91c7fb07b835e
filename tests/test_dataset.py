"""training/dataset.py: ImageFolderDataset over zips and folders made by dataset_tool."""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

import dataset_tool
import dnnlib
from dnnlib.util import InputError
from training.dataset import ImageFolderDataset, ImageShapeError

N = 12


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """A labelled RGB dataset as a zip and as a folder, plus the raw images (HWC) and labels."""
    root = tmp_path_factory.mktemp('ds')
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, 8, 8, 3), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 4, size=N)]
    labels[0] = 4  # label_dim = max + 1 = 5
    src = root / 'src'
    src.mkdir()
    for i in range(N):
        PIL.Image.fromarray(images[i]).save(src / f'{i:03d}.png')
    (src / 'dataset.json').write_text(json.dumps({'labels': [[f'{i:03d}.png', labels[i]] for i in range(N)]}))
    dataset_tool.convert_dataset(str(src), str(root / 'tiny-8x8.zip'), progress=False)
    dataset_tool.convert_dataset(str(src), str(root / 'tiny-dir'), progress=False)
    return dict(zip=str(root / 'tiny-8x8.zip'), dir=str(root / 'tiny-dir'), images=images, labels=labels, root=root)


@pytest.mark.parametrize('kind', ['zip', 'dir'])
def test_items_properties_and_labels(data, kind):
    ds = ImageFolderDataset(data[kind], use_labels=True)
    assert len(ds) == N
    assert ds.name == ('tiny-8x8' if kind == 'zip' else 'tiny-dir')
    assert ds.image_shape == [3, 8, 8] and ds.num_channels == 3 and ds.resolution == 8
    assert ds.label_shape == [5] and ds.label_dim == 5 and ds.has_labels and ds.has_onehot_labels
    for i in range(N):
        img, label = ds[i]
        assert img.dtype == np.uint8 and img.shape == (3, 8, 8)
        np.testing.assert_array_equal(img, data['images'][i].transpose(2, 0, 1))
        expected = np.zeros(5, np.float32)
        expected[data['labels'][i]] = 1
        assert label.dtype == np.float32
        np.testing.assert_array_equal(label, expected)
    assert ds.get_details(3).raw_idx == 3 and ds.get_details(3).raw_label == data['labels'][3]


def test_labels_disabled(data):
    ds = ImageFolderDataset(data['zip'])
    _, label = ds[0]
    assert label.shape == (0,) and label.dtype == np.float32
    assert ds.label_shape == [0] and ds.label_dim == 0 and not ds.has_labels


def test_xflip_and_max_size(data):
    ds = ImageFolderDataset(data['zip'], xflip=True, max_size=5, random_seed=7)
    order = np.arange(N)
    np.random.RandomState(7).shuffle(order)
    chosen = np.sort(order[:5])
    assert len(ds) == 10
    for j in range(10):
        img, _ = ds[j]
        expected = data['images'][chosen[j % 5]].transpose(2, 0, 1)
        if j >= 5:
            expected = expected[:, :, ::-1]
        np.testing.assert_array_equal(img, expected)
        assert ds.get_details(j).xflip == (j >= 5)
    assert len(ImageFolderDataset(data['zip'], max_size=100)) == N


def test_cache(data, monkeypatch):
    ds = ImageFolderDataset(data['zip'], cache=True)
    calls = []
    original = ds._load_raw_image  # pylint: disable=protected-access
    monkeypatch.setattr(ds, '_load_raw_image', lambda i: calls.append(i) or original(i))
    first, _ = ds[2]
    first[:] = 0  # Items are copies: editing one does not touch the cache.
    again, _ = ds[2]
    assert calls == [2]
    np.testing.assert_array_equal(again, data['images'][2].transpose(2, 0, 1))


def test_worker_safe_zip(data):
    ds = ImageFolderDataset(data['zip'], use_labels=True)
    ds[0]  # The parent holds an open handle now; it must neither be pickled nor shared with workers.
    state = pickle.dumps(ds)
    assert b'ZipFile' not in state
    clone = pickle.loads(state)
    np.testing.assert_array_equal(clone[5][0], ds[5][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    for _epoch in range(2):
        images = torch.cat([x for x, _ in loader]).numpy()
        np.testing.assert_array_equal(images, data['images'].transpose(0, 3, 1, 2))


def test_construct_by_name(data):
    ds = dnnlib.util.construct_class_by_name(class_name='training.dataset.ImageFolderDataset', path=data['zip'],
                                             use_labels=True, xflip=False, cache=True)
    assert isinstance(ds, ImageFolderDataset) and ds.label_dim == 5 and len(ds) == N


def test_grayscale_and_float_labels(tmp_path):
    path = tmp_path / 'g.zip'
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(3, 4, 4), dtype=np.uint8)
    with zipfile.ZipFile(path, 'w') as z:
        for i in range(3):
            buf = io.BytesIO()
            PIL.Image.fromarray(imgs[i], 'L').save(buf, format='png')
            z.writestr(f'00000/img{i:08d}.png', buf.getvalue())
        z.writestr('dataset.json', json.dumps({'labels': [[f'00000/img{i:08d}.png', [i, 0.5]] for i in range(3)]}))
    ds = ImageFolderDataset(str(path), use_labels=True)
    assert ds.image_shape == [1, 4, 4] and not ds.has_onehot_labels and ds.label_shape == [2]
    img, label = ds[2]
    np.testing.assert_array_equal(img[0], imgs[2])
    np.testing.assert_array_equal(label, np.array([2, 0.5], np.float32))


def test_errors(data, tmp_path):
    with pytest.raises(InputError, match='no such folder'):
        ImageFolderDataset(str(tmp_path / 'missing.zip'))
    (tmp_path / 'x.txt').write_text('x')
    with pytest.raises(InputError, match='must be a folder or a .zip'):
        ImageFolderDataset(str(tmp_path / 'x.txt'))
    with pytest.raises(InputError, match='resolution=16'):
        ImageFolderDataset(data['zip'], resolution=16)
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(InputError, match='no image files'):
        ImageFolderDataset(str(empty))
    mixed = tmp_path / 'mixed'
    mixed.mkdir()
    PIL.Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(mixed / 'a.png')
    PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(mixed / 'b.png')
    ds = ImageFolderDataset(str(mixed))
    with pytest.raises(ImageShapeError) as info:
        ds[1]
    assert 'b.png' in str(info.value) and '\n' not in str(info.value)
    with pytest.raises(ValueError, match='not square'):
        wide = tmp_path / 'wide'
        wide.mkdir()
        PIL.Image.fromarray(np.zeros((4, 8, 3), np.uint8)).save(wide / 'a.png')
        _ = ImageFolderDataset(str(wide)).resolution
    os.remove(mixed / 'b.png')

# ----------------------------------------------------------------------------
# Broken and hostile files: one InputError line naming the file, bounded memory.


def _zip_dataset(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, 'w', compression=compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return str(path)


def _png(side=4):
    buf = io.BytesIO()
    PIL.Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(buf, format='png')
    return buf.getvalue()


DATASET_JSON_CASES = {
    'top-level list': ('[["00000/img00000000.png", 0]]', 'expected an object'),
    'labels not a list': ('{"labels": 5}', '"labels" must be a list'),
    'labels a dict': ('{"labels": {"00000/img00000000.png": 0}}', '"labels" must be a list'),
    'entry not a pair': ('{"labels": [["00000/img00000000.png"]]}', 'pairs'),
    '3-D labels': ('{"labels": [["00000/img00000000.png", [[1, 2], [3, 4]]]]}', 'expected a class index in'),
    'huge integer': ('{"labels": [["00000/img00000000.png", ' + '9' * 400 + ']]}', 'expected a class index in'),
    '10^12 classes': ('{"labels": [["00000/img00000000.png", 1000000000000]]}', 'in 0..65535'),
    'negative class': ('{"labels": [["00000/img00000000.png", -1]]}', 'expected a class index in'),
    'boolean': ('{"labels": [["00000/img00000000.png", true]]}', 'expected a class index in'),
    'not finite': ('{"labels": [["00000/img00000000.png", [NaN]]]}', 'expected a class index in'),
    'mixed kinds': ('{"labels": [["00000/img00000000.png", 1], ["00000/img00000001.png", [0.5]]]}',
                    'expected a class index'),
    'ragged vectors': ('{"labels": [["00000/img00000000.png", [1]], ["00000/img00000001.png", [0.5, 2]]]}',
                       'expected a vector of 1 numbers'),
    'not JSON': ('{"labels": [', 'not valid JSON'),
    'nested too deeply': ('[' * 100000 + ']' * 100000, 'not valid JSON'),
}


@pytest.mark.parametrize('case', sorted(DATASET_JSON_CASES))
def test_broken_dataset_json(tmp_path, case):
    text, message = DATASET_JSON_CASES[case]
    png = _png()
    path = _zip_dataset(tmp_path / 'd.zip', {'00000/img00000000.png': png, '00000/img00000001.png': png,
                                             'dataset.json': text})
    ds = ImageFolderDataset(path, use_labels=True)
    with pytest.raises(InputError) as info:
        _ = ds.label_dim
    line = str(info.value)
    assert message in line and 'dataset.json' in line and '\n' not in line and len(line) < 400


def test_dataset_json_null_and_missing_labels(tmp_path):
    png = _png()
    for text in ('{"labels": null}', '{}'):
        ds = ImageFolderDataset(_zip_dataset(tmp_path / 'n.zip', {'a.png': png, 'dataset.json': text}),
                                use_labels=True)
        assert ds.label_dim == 0 and not ds.has_labels


def test_zip_bomb_member_is_refused(tmp_path):
    # 80 MiB of spaces deflate to about 80 KB: far beyond 64 times the stored bytes, and beyond the 64 MiB floor.
    path = _zip_dataset(tmp_path / 'bomb.zip', {'00000/img00000000.png': _png(),
                                                'dataset.json': b' ' * (80 << 20)}, zipfile.ZIP_DEFLATED)
    assert os.path.getsize(path) < 200_000
    ds = ImageFolderDataset(path, use_labels=True)
    with pytest.raises(InputError, match=r'dataset.json: the uncompressed entry would take 80.0 MiB from .* over '
                                         r'the limit of 64.0 MiB'):
        _ = ds.label_dim


def _patch_sizes(path, name, compress_size, file_size):
    """Forge the sizes a zip declares for `name` (local header and central directory)."""
    with open(path, 'rb') as f:
        data = bytearray(f.read())
    encoded = name.encode()
    for signature, offset, header in ((b'PK\x03\x04', 18, 30), (b'PK\x01\x02', 20, 46)):
        at = data.find(signature)
        while at >= 0:
            if data[at + header:at + header + len(encoded)] == encoded:
                data[at + offset:at + offset + 8] = compress_size.to_bytes(4, 'little') + \
                    file_size.to_bytes(4, 'little')
            at = data.find(signature, at + 4)
    with open(path, 'wb') as f:
        f.write(bytes(data))


@pytest.mark.parametrize('sizes,message', [((4000000000, 4000000000), 'more than the whole archive'),
                                           ((20, 4000000000), 'stored entry declares')])
def test_forged_zip_sizes_are_refused(tmp_path, sizes, message):
    path = _zip_dataset(tmp_path / 'forged.zip', {'00000/img00000000.png': _png(), 'dataset.json': '{"labels": null}'})
    _patch_sizes(path, 'dataset.json', *sizes)
    ds = ImageFolderDataset(path, use_labels=True)
    with pytest.raises(InputError, match=message):
        _ = ds.label_dim


def png_header_only(width, height):
    """A PNG that announces width x height RGB pixels but holds no image data."""
    import struct
    import zlib

    def chunk(kind, payload):
        return struct.pack('>I', len(payload)) + kind + payload + struct.pack('>I', zlib.crc32(kind + payload))
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)) + \
        chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b'')


def test_image_announcing_huge_size_is_refused_before_decoding(tmp_path):
    path = _zip_dataset(tmp_path / 'big.zip', {'00000/img00000000.png': png_header_only(9000, 9000)})
    with pytest.raises(InputError, match=r'img00000000.png: the decoded image would take 231.7 MiB from 65 bytes '
                                         r'stored, over the limit'):
        ImageFolderDataset(path)


def test_control_characters_in_names_are_escaped(tmp_path):
    png = _png()
    evil = 'a\x1b[2K\rSuccess.png'
    path = _zip_dataset(tmp_path / 'e.zip', {evil: png, 'b.png': png,
                                             'dataset.json': json.dumps({'labels': [['b.png', 0]]})})
    ds = ImageFolderDataset(path, use_labels=True)
    with pytest.raises(InputError) as info:
        _ = ds.label_dim
    line = str(info.value)
    assert '\x1b' not in line and '\r' not in line and '\\x1b[2K\\rSuccess.png' in line
