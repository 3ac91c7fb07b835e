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
    with pytest.raises(IOError, match='no such folder'):
        ImageFolderDataset(str(tmp_path / 'missing.zip'))
    (tmp_path / 'x.txt').write_text('x')
    with pytest.raises(IOError, match='must be a folder or a .zip'):
        ImageFolderDataset(str(tmp_path / 'x.txt'))
    with pytest.raises(IOError, match='resolution=16'):
        ImageFolderDataset(data['zip'], resolution=16)
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(IOError, match='no image files'):
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
