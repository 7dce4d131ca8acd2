"""Shared test setup: one thread (2 shared cores), the tiny spec, and skips for gpu/browser tests."""
from __future__ import annotations

import shutil

import pytest
import torch

torch.set_num_threads(1)

_CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def _has_chromium() -> bool:
    if any(shutil.which(name) for name in _CHROMIUM):
        return True
    try:  # playwright's bundled chromium counts too
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        return False
    import glob
    import os

    return bool(glob.glob(os.path.expanduser("~/.cache/ms-playwright/chromium*")))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA GPU")
    skip_browser = None if _has_chromium() else pytest.mark.skip(reason="needs a headless chromium")
    for item in items:
        if skip_gpu is not None and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
        if skip_browser is not None and "browser" in item.keywords:
            item.add_marker(skip_browser)


@pytest.fixture
def tiny_spec():
    """4 blocks, width 64, 4 scales, 64-token vocab: every model test's default size."""
    from model import spec

    return spec.SPECS["var-tiny"]
