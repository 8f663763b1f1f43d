"""Fixtures of the weight-level study tests: the tiny toy folder and a loaded copy."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_loaded(tiny_toy_folder):
    from interpipe.models import load_model

    return load_model(tiny_toy_folder)
