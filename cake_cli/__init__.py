"""The ``cake`` command line."""
