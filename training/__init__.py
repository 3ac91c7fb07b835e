"""Training: networks, losses, augmentation, datasets and the training loop.

Importing the package declares the standard persistent classes (`networks`, `loss`, `augment`, and CLD's `cld`),
so that `torch_utils.persistence.load_network` can find them by name.
"""

from . import augment, cld, loss, networks  # noqa: F401
