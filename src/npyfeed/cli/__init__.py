"""The ``npyfeed`` command line (``npyfeed`` script, ``python -m npyfeed``): see :mod:`npyfeed.cli.main`."""

from npyfeed.cli.main import main

__all__ = ["main"]
