"""Training: networks, losses, augmentation, datasets and the training loop.

Importing the package declares the standard persistent classes (`networks`, `loss`, `augment`), so that
`torch_utils.persistence.load_network` can find them by name.
"""

from . import augment, loss, networks  # noqa: F401
