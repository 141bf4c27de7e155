"""Test-only hooks installed into subprocesses (see :mod:`tests.hooks.sitecustomize`)."""
