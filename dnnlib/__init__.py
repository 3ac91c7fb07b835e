"""Small runtime helpers shared by every script (EasyDict, construction by name, cached downloads)."""
from .util import EasyDict, make_cache_dir_path, construct_class_by_name, get_obj_by_name, open_url  # noqa: F401
