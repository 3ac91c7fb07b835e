"""Small runtime helpers shared by every script (EasyDict, construction by name, cached downloads)."""
from .util import (EasyDict, InputError, construct_class_by_name, get_obj_by_name, make_cache_dir_path,  # noqa: F401
                   open_url, printable)
