"""Registers the ``lab`` marker used by tests that run the Bochs lab (tests/test_lab_e2e.py).

Note: this conftest is only loaded for tests collected under tests/lab/; the
marker should also be declared in the project's pytest configuration
(``markers = ["lab: runs the Bochs VT-x lab (needs bochs-bin and nasm)"]``).
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``lab`` marker."""
    config.addinivalue_line("markers", "lab: runs the Bochs VT-x lab (needs bochs-bin and nasm)")
