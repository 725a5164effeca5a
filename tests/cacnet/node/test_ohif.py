"""Our SEG and SR in a real radiology viewer (issue 28, item 2): OHIF 3.13 (the npm package @ohif/app's built
dist/) served against Orthanc's DICOMweb plugin (Debian orthanc-dicomweb), opened in headless Chromium.

A calcium-score series goes through `cac orthanc --once`; OHIF then lists the CT, our SEG (9901) and SR (9902) in
the study; loading the SEG lists one segment per artery with calcium, by name, and overlays them on the CT in
their colours on the slice where the SEG has them (and nowhere on a slice without calcium). OHIF 3.13 does not
show our SR's measurements: it only draws TID 1500 groups that hold image coordinates (SCOORD/SCOORD3D), and
ours reference SEG segments; the test pins that (see docs/deployment.md, "What a radiologist sees").

Fails (never skips) without Chromium and chromedriver, orthanc-dicomweb or the viewer (fetched by
tests/cacnet/fetch_ohif.py; .ci/run does all three). CAC_OHIF_SCREENSHOTS=DIR keeps the screenshots there
(docs/ohif/ holds those of the docs).
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ..browser_helpers import chromium
from ..fetch_ohif import ohif_dist
from ..orthanc_helpers import OhifServer, OrthancServer, phantom_volume, run_node, write_ct

pytestmark = pytest.mark.slow

# the SEG segments' colours as OHIF draws them (RecommendedDisplayCIELabValue of LM yellow, LAD red, LCX green)
_COLOURS = {"LM": lambda r, g, b: (r > 200) & (g > 160) & (b < 90),
            "LAD": lambda r, g, b: (r > 200) & (g < 100) & (b < 100),
            "LCX": lambda r, g, b: (g > 170) & (r < 120) & (b < 120)}


def _browser():
    # WebGL without a GPU: SwiftShader (OHIF's cornerstone renders with WebGL)
    return chromium("the OHIF test", ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                                      "--window-size=1600,1000", "--enable-unsafe-swiftshader",
                                      "--use-angle=swiftshader"))


def _wait(fn, timeout: float = 60.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = fn()
            if got:
                return got
        except Exception:  # noqa: BLE001 - the page is still building
            pass
        assert time.monotonic() < deadline, f"OHIF: {what} not there after {timeout} s"
        time.sleep(0.25)


def _coloured(png: bytes) -> dict[str, int]:
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    return {name: int(test(r, g, b).sum()) for name, test in _COLOURS.items()}


def test_ohif_shows_our_seg_on_the_ct_and_lists_our_sr(tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    dist = ohif_dist()
    orthanc = OrthancServer(tmp_path / "orthanc", dicomweb=True).start()
    viewer = None
    d = None
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        uid, files = write_ct(tmp_path / "ct", *phantom_volume(11, "D"))
        orthanc.upload(files)
        orthanc.wait_stable([uid])
        r = run_node(orthanc.url, tmp_path / "state", "--once", "--no-report")
        assert r.returncode == 0 and "1 scored" in r.stderr, r.stderr
        ours = orthanc.ours(uid)
        seg = pydicom.dcmread(io.BytesIO(orthanc.instance_file(ours["SEG"][0])))
        labels = [str(s.SegmentLabel) for s in seg.SegmentSequence]
        # the CT slice holding the most segments, and one holding none
        by_uid = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): int(
            pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in files}
        segments_on: dict[int, set] = {}
        for frame in seg.PerFrameFunctionalGroupsSequence:
            inst = by_uid[str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)]
            segments_on.setdefault(inst, set()).add(labels[frame.SegmentIdentificationSequence[0]
                                                           .ReferencedSegmentNumber - 1].split()[0])
        busiest = max(segments_on, key=lambda k: (len(segments_on[k] & set(_COLOURS)), -k))
        empty = min((k for k in by_uid.values() if k not in segments_on), key=lambda k: abs(k - busiest))

        viewer = OhifServer(dist, orthanc)
        d = _browser()
        study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        d.get(f"{viewer.url}/viewer?StudyInstanceUIDs={study}")
        seg_thumb = _wait(lambda: d.find_element(By.CSS_SELECTOR, '[data-series="9901"]'), what="the SEG series")
        sr_thumb = _wait(lambda: d.find_element(By.CSS_SELECTOR, '[data-series="9902"]'), what="the SR series")
        assert "Coronary calcium SEG (cac-toolkit)" in seg_thumb.text and "SEG" in seg_thumb.text
        assert "Coronary calcium report (cac-toolkit)" in sr_thumb.text and "SR" in sr_thumb.text
        _wait(lambda: "I:" in d.find_element(By.CSS_SELECTOR, '[data-cy="viewport-overlay-bottom-right"]').text,
              what="the CT in the viewport")
        deadline = time.monotonic() + 10  # the first-visit tour, when OHIF shows one
        while time.monotonic() < deadline:
            tour = d.find_elements(By.XPATH, "//*[normalize-space(text())='Skip all']")
            if tour:
                tour[0].click()
                break
            time.sleep(0.25)

        # load the SEG: OHIF asks first, then lists its segments
        ActionChains(d).double_click(seg_thumb).perform()
        yes = _wait(lambda: [e for e in d.find_elements(By.XPATH, "//button[normalize-space(.)='Yes']")
                             if e.is_displayed()], what="the 'open this Segmentation?' prompt")
        assert "Do you want to open this Segmentation?" in d.find_element(By.TAG_NAME, "body").text
        yes[0].click()
        d.find_element(By.CSS_SELECTOR, '[data-cy="panelSegmentation-btn"]').click()
        body = _wait(lambda: d.find_element(By.TAG_NAME, "body").text if all(
            lab in d.find_element(By.TAG_NAME, "body").text for lab in labels) else "", what="the segment list")
        assert "Segmentations" in body and all(lab in body for lab in labels), body

        pane = d.find_element(By.CSS_SELECTOR, '[data-cy="viewport-pane"]')
        ActionChains(d).move_to_element(pane).send_keys("1").perform()  # soft-tissue window (W 400, L 40)

        def go_to(instance: int) -> None:
            for _ in range(2 * len(files)):
                text = d.find_element(By.CSS_SELECTOR, '[data-cy="viewport-overlay-bottom-right"]').text
                now = int(text.split("I:")[1].split()[0])
                if now == instance:
                    time.sleep(1.5)
                    return
                ActionChains(d).send_keys(Keys.ARROW_DOWN if now > instance else Keys.ARROW_UP).perform()
                time.sleep(0.2)
            raise AssertionError(f"OHIF: could not scroll to instance {instance}")

        go_to(busiest)
        for _ in range(3):
            ActionChains(d).send_keys("+").perform()  # zoom in
            time.sleep(0.3)
        time.sleep(1.5)
        png = pane.screenshot_as_png
        (shots / "ohif_seg_overlay.png").write_bytes(d.get_screenshot_as_png())
        seen = _coloured(png)
        for name in segments_on[busiest] & set(_COLOURS):
            assert seen[name] > 20, (name, seen)  # each artery's segment drawn in its colour
        go_to(empty)
        blank = _coloured(pane.screenshot_as_png)
        assert all(v < 5 for v in blank.values()), blank  # and nothing where the SEG has nothing

        # the SR: OHIF opens it but draws none of its measurements (no image coordinates in our groups)
        d.get_log("browser")
        ActionChains(d).double_click(sr_thumb).perform()
        log: list[str] = []

        def skipped() -> bool:
            log.extend(e["message"] for e in d.get_log("browser"))
            return any("contains no SCOORD or SCOORD3D entry, skipping annotation" in m for m in log)

        try:
            _wait(skipped, timeout=30, what="the SR")
        except AssertionError:
            raise AssertionError("OHIF now reads our SR differently: check what it shows and update "
                                 "docs/deployment.md") from None
        time.sleep(2)
        (shots / "ohif_sr.png").write_bytes(d.get_screenshot_as_png())
    finally:
        if d is not None:
            d.quit()
        if viewer is not None:
            viewer.close()
        orthanc.stop(graceful=False)
        keep = os.environ.get("CAC_OHIF_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for f in shots.glob("*.png"):
                shutil.copy(f, Path(keep) / f.name)
