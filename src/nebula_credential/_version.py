"""The package version, in a module of its own.

Read by the package's ``__init__``, the CLI's ``--version``, the server's
``/v1/sys`` routes and the build (``pyproject.toml``), none of which then
needs to import the whole package for one string.
"""

__version__ = "0.1.0"
