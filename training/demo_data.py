"""The bundled demo's dataset, and a writer for small in-memory datasets in the EDM layout.

The demo uses the handwritten digits that scikit-learn ships (the UCI "optdigits" test set: 1797 images of
8x8 pixels with 17 gray levels, classes 0-9), scaled to 0-255 and enlarged to 16x16 with PIL's LANCZOS filter.
scikit-learn is needed only to rebuild the dataset:

    pip install scikit-learn
    python -m training.demo_data --dest=datasets/digits-16x16.zip
"""

import json
import zipfile

import click
import numpy as np
import PIL.Image

from dnnlib.util import atomic_path
from training.dataset import archive_name, encode_png

# ----------------------------------------------------------------------------


def write_dataset(images, dest, labels=None):
    """Write uint8 images [N, H, W] (grayscale) or [N, H, W, 3] and optional integer labels [N] as an EDM dataset zip.

    The zip is written under a temporary name and renamed when complete.
    """
    images = np.asarray(images, dtype=np.uint8)
    names = [archive_name(i) for i in range(len(images))]
    meta = dict(labels=None if labels is None else [[name, int(label)] for name, label in zip(names, labels)])
    with atomic_path(dest) as tmp, zipfile.ZipFile(tmp, 'w', compression=zipfile.ZIP_STORED) as z:
        for name, image in zip(names, images):
            z.writestr(name, encode_png(image))
        z.writestr('dataset.json', json.dumps(meta))
    return dest


def digits(resolution=16):
    """scikit-learn's 8x8 digits as uint8 [1797, R, R] images (white on black) and int labels [1797]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise click.ClickException('building the demo dataset needs scikit-learn: pip install scikit-learn') from e
    data = load_digits()
    small = np.rint(data.images * (255 / 16)).astype(np.uint8)
    images = np.stack([np.asarray(PIL.Image.fromarray(img, 'L').resize((resolution, resolution), PIL.Image.LANCZOS))
                       for img in small])
    return images, data.target.astype(np.int64)


@click.command(context_settings=dict(terminal_width=80, max_content_width=80))
@click.option('--dest', help='Output zip', metavar='ZIP', default='datasets/digits-16x16.zip', show_default=True)
@click.option('--resolution', help='Image side', metavar='INT', type=click.Choice(['8', '16', '32']), default='16',
              show_default=True)
def main(dest, resolution):
    """Build the bundled demo's dataset (scikit-learn's handwritten digits, 10 classes)."""
    images, labels = digits(int(resolution))
    write_dataset(images, dest, labels)
    print(f'Wrote {len(images)} images of {resolution}x{resolution} to {dest}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
