"""A headless Chromium for the tests that need a real browser (the review report, OHIF).

Debian: ``apt-get install chromium chromium-driver``; ``CAC_CHROMIUM`` and ``CAC_CHROMEDRIVER`` name other
binaries. The tests fail, never skip, when they are missing: CI installs them (.ci/run).
"""

from __future__ import annotations

import os
import shutil
from typing import Optional, Sequence

import pytest


def chromium(purpose: str, args: Sequence[str], prefs: Optional[dict] = None):
    """A selenium Chrome WebDriver on headless Chromium with ``args``, the browser's console log kept.

    ``purpose`` names the test in the message when Chromium or chromedriver is missing.
    """
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: pip install '.[test]'")
    binary = os.environ.get("CAC_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = os.environ.get("CAC_CHROMEDRIVER") or shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail(f"{purpose} needs Chromium and chromedriver: apt-get install -y chromium chromium-driver "
                    "(or set CAC_CHROMIUM and CAC_CHROMEDRIVER); .ci/run installs them")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in args:
        opts.add_argument(arg)
    if prefs:
        opts.add_experimental_option("prefs", prefs)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)
