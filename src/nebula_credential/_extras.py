"""The one way an optional extra is imported: a missing package names the extra to install.

Every backend that needs a package outside the core dependencies (the
providers, the PostgreSQL store, ``serve`` and ``daemon --ui``) imports it
through here, so a user who picked a backend without its extra reads
``pip install 'nebula-credential[<extra>]'`` instead of a bare
``ModuleNotFoundError`` from deep inside the package.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from .exceptions import MissingDependencyError


@contextmanager
def extra(name: str, package: str | None = None) -> Iterator[None]:
    """Imports inside the block belong to extra ``name``; one that fails raises
    :class:`MissingDependencyError` naming ``package`` (default: the module that was missing)."""
    try:
        yield
    except MissingDependencyError:
        raise
    except ImportError as exc:
        missing = package or (exc.name or "").partition(".")[0] or name
        raise MissingDependencyError(missing, name) from exc


def require(module: str, extra_name: str, package: str | None = None) -> ModuleType:
    """``module`` imported, or :class:`MissingDependencyError` naming extra ``extra_name``."""
    with extra(extra_name, package or module.partition(".")[0]):
        return importlib.import_module(module)


__all__ = ["extra", "require"]
