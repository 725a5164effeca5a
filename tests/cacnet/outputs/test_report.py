"""The HTML review report and the quick-look preview, checked as files and in a real (headless) browser."""

import json
import re
import time

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

import agatston
from cacnet.cli import app
from cacnet.components import find_components
from cacnet.io import read_scan
from cacnet.outputs._render import encode_png
from cacnet.outputs.preview import TILE_PX, preview_caption
from cacnet.outputs.report import NOT_VALIDATED_NOTICE
from cacnet.review import apply_review

from ..browser_helpers import chromium

runner = CliRunner()


def page_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="cac-data">(.*?)</script>', html, re.S)
    assert m, "the page embeds its data"
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_report_is_one_self_contained_file(scored_example):
    out, res = scored_example
    html = (out / "phantom_example.html").read_text(encoding="utf-8")
    assert "<link" not in html and "<iframe" not in html and not re.search(r"<script[^>]+src=", html)
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", html) and "url(http" not in html
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert NOT_VALIDATED_NOTICE in html
    assert "@page{size:A4" in html  # prints on A4
    for key in ("Triage", "Models", "Overview", "Lesions (", "Rejected candidates (", res.data["cac_drs"]["label"]):
        assert key in html


def test_report_cards_and_page_data_match_the_result(scored_example):
    out, res = scored_example
    html = (out / "phantom_example.html").read_text(encoding="utf-8")
    page = page_data(html)
    table = find_components(res.scan.hu, res.scan.spacing, res.labels, res.data)
    assert page["components_sha256"] == table.digest and page["scan_sha256"] == res.data["source"]["sha256"]
    assert [c["id"] for c in page["components"]] == [c.id for c in table.components]
    lesions = [c for c in page["components"] if c["kind"] == "lesion"]
    assert sum(c["agatston"] for c in lesions) == pytest.approx(res.data["agatston"], abs=1e-9)
    for name, v in res.data["arteries"].items():
        assert sum(c["agatston"] for c in lesions if c["artery"] == name) == pytest.approx(v["agatston"], abs=1e-9)
    for comp in table.uncounted:  # too small to count: a row of the "not counted" list, no card
        assert f'<tr data-id="{comp.id}">' in html and f'data-id="{comp.id}" data-kind' not in html
    for comp in table.lesions + table.candidates:
        card = re.search(rf'<section class="card {comp.kind}" data-id="{comp.id}".*?</section>', html, re.S)
        assert card, comp.id
        caps = re.findall(r"slice (\d+) · z (-?[\d.]+) mm", card.group(0))
        assert [int(z) for z, _ in caps] == comp.slices  # one crop per slice the component spans
        assert card.group(0).count('class="o r">R<') == len(comp.slices)  # orientation markers on every crop


def test_preview_is_a_quick_look(scored_example):
    out, res = scored_example
    img = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "phantom_example.png")))
    table = find_components(res.scan.hu, res.scan.spacing, res.labels, res.data)
    head = 22 * len(preview_caption(res.data, table, max_chars=(img.shape[1] - 16) // 12)) + 30
    assert img.ndim == 3 and img.shape[2] == 3
    assert img.shape[1] == 3 * TILE_PX + 2 * 4 and img.shape[0] == head + 2 * TILE_PX + 4 + 22  # header, rows, footer
    # lesions are outlined in their artery's colour (LAD red in the example)
    red = (img[..., 0] == 255) & (img[..., 1] == 40) & (img[..., 2] == 40)
    assert red[head:].sum() > 50


def _html_counts(html: str) -> dict:
    return {"lesions": int(re.search(r"<h2>Lesions \((\d+)\)</h2>", html).group(1)),
            "lesion_cards": html.count('<section class="card lesion"'),
            "uncounted": len(re.findall(r'<tr data-id="[\d-]+">', html)),
            "rejected_candidates": int(re.search(r"<h2>Rejected candidates \((\d+)\)</h2>", html).group(1)),
            "unvoted": int(re.search(r"<h2>Not voted for \((\d+)\)</h2>", html).group(1))}


def test_counts_agree_in_json_preview_and_report(scored_example):
    """One definition of "lesions" (the result's n_lesions) and of "candidates" (its rejected_candidates)."""
    out, res = scored_example
    data = json.loads((out / "phantom_example.json").read_text())
    html = (out / "phantom_example.html").read_text(encoding="utf-8")
    table = find_components(res.scan.hu, res.scan.spacing, res.labels, data)
    n = table.counts(data)
    assert n["lesions"] == data["n_lesions"] == len({les["lesion_id"] for les in data["lesions"]})
    assert n["rejected_candidates"] == len(data["rejected_candidates"]) >= 1
    # the example's mask holds specks too small to count (below 1 mm2): listed apart, not as lesions
    assert n["uncounted"] >= 1 and len(table.in_mask) == data["n_lesions"] + n["uncounted"]
    assert _html_counts(html) == {"lesions": data["n_lesions"], "lesion_cards": data["n_lesions"],
                                  "uncounted": n["uncounted"],
                                  "rejected_candidates": len(data["rejected_candidates"]), "unvoted": n["unvoted"]}
    assert f"Not counted (&lt; 1 mm²): {n['uncounted']}" in html
    caption = [line for line, _ in preview_caption(data, table)]
    assert caption[2].startswith(f"{data['n_lesions']} LESIONS  {len(data['review'])} FLAGGED  "
                                 f"{n['uncounted']} NOT COUNTED (BELOW 1 MM2, GREY)")
    assert caption[3].startswith(f"{len(data['rejected_candidates'])} REJECTED CANDIDATE")


def test_counts_agree_on_a_synthetic_case(tmp_path, monkeypatch):
    """The synthetic case of test_review (3 lesions, an uncounted LM voxel, candidates) scored as a file."""
    from cacnet import components
    from cacnet.outputs.report import render_report
    from cacnet.pipeline import ScanResult

    from ..test_review import SPACING, synthetic

    monkeypatch.setattr(components, "MAX_QUIET_CANDIDATE_MM3", 500.0)  # the bone block stays out
    hu, labels, data = synthetic()
    img = sitk.GetImageFromArray(hu.astype(np.int16))
    img.SetSpacing(SPACING[::-1])
    sitk.WriteImage(img, str(tmp_path / "syn.nii.gz"))
    scan = read_scan(tmp_path / "syn.nii.gz")
    assert np.array_equal(scan.hu, hu)
    ref = agatston.score(scan.hu, scan.spacing, labels)
    arteries = {name: {"agatston": ref.by_label[k].agatston if k in ref.by_label else 0.0,
                       "n_lesions": ref.by_label[k].n_lesions if k in ref.by_label else 0}
                for k, name in agatston.ARTERY_NAMES.items()}
    data.update(agatston=ref.agatston, category=ref.category, arteries=arteries, n_lesions=ref.n_lesions,
                review=[2], warnings=[], source={"sha256": "0" * 64})
    data["rejected_candidates"][0]["reason"] = "outside the heart"  # a rule's reason is shown with the votes
    html = render_report(ScanResult(id="syn", labels=labels, score=ref, data=data, scan=scan))
    table = find_components(scan.hu, scan.spacing, labels, data)
    assert ref.n_lesions == 3
    assert _html_counts(html) == {"lesions": 3, "lesion_cards": 3, "uncounted": 1, "rejected_candidates": 1,
                                  "unvoted": 1}
    assert '<tr data-id="3-50-50"><td class="l">U1</td><td class="l">LM</td>' in html
    assert "<span>2/5 models, proposed LCX; rejected: outside the heart</span>" in html
    assert [line for line, _ in preview_caption(data, table)][2:4] == [
        "3 LESIONS  1 FLAGGED  1 NOT COUNTED (BELOW 1 MM2, GREY)", "1 REJECTED CANDIDATE (C1)  1 UNVOTED IN HEART (H1)"]


@pytest.mark.parametrize("channels", [None, 2, 3, 4])
def test_encode_png_round_trip(tmp_path, channels):
    rng = np.random.default_rng(channels or 1)
    shape = (37, 53) if channels is None else (37, 53, channels)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    a[5:9] = a[4]  # repeated rows (the Up filter)
    data = encode_png(a)
    assert np.array_equal(decode_png(data).reshape(a.shape), a)
    if channels != 2:  # an independent reader too (ITK reads no grey + alpha PNG)
        (tmp_path / "a.png").write_bytes(data)
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a.png")))
        assert np.array_equal(back.reshape(a.shape), a)


def decode_png(data: bytes) -> np.ndarray:
    """A minimal PNG reader (8-bit, filters None/Sub/Up, which is all encode_png writes)."""
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w, h, ch = 8, b"", 0, 0, 1
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            ch = {0: 1, 4: 2, 2: 3, 6: 4}[ctype]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * ch)
    out = np.zeros((h, w * ch), np.uint8)
    for r in range(h):
        f, row = raw[r, 0], raw[r, 1:].copy()
        if f == 1:
            for i in range(ch, row.size):
                row[i] = (int(row[i]) + int(row[i - ch])) & 255
        elif f == 2 and r:
            row = (row.astype(np.int32) + out[r - 1]).astype(np.uint8)
        else:
            assert f in (0, 2)
        out[r] = row
    return out.reshape(h, w, ch)


def test_cli_report_and_preview(phantom_scans, toy_weights, tmp_path):
    folder, _ = phantom_scans
    r = runner.invoke(app, ["score", str(folder / "case21.nii.gz"), "--report"])
    assert r.exit_code == 2 and "need -o OUTDIR" in r.stderr
    r = runner.invoke(app, ["score", str(folder / "case21.nii.gz"), "-o", str(tmp_path), "--report", "--preview",
                            "--weights", str(toy_weights), "--force"])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "case21.html").read_text(encoding="utf-8")
    data = json.loads((tmp_path / "case21.json").read_text())
    assert page_data(html)["scan_sha256"] == data["source"]["sha256"]
    assert (tmp_path / "case21.png").stat().st_size > 1000


def test_report_of_a_scan_without_findings(phantom_scans, tmp_path):
    from cacnet.ensemble import Ensemble
    from cacnet.outputs.write import write_outputs
    from cacnet.pipeline import score_scan

    from ..conftest import make_weights

    folder, _ = phantom_scans
    weights = make_weights(tmp_path / "w", thresholds=(5000,) * 5)  # no model votes for anything
    res = score_scan(folder / "case23.nii.gz", Ensemble(weights), force=True)  # a crop too small for a heart
    write_outputs(res, tmp_path / "o", preview=True, report=True)
    html = (tmp_path / "o" / "case23.html").read_text(encoding="utf-8")
    assert "No lesion: the models found no coronary calcium." in html
    page = page_data(html)
    # what no model voted for is still shown: dense parts in the heart region, as candidates
    assert all(c["kind"] == "candidate" and c["votes"] == 0 for c in page["components"])
    img = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o" / "case23.png")))
    assert img.shape[1] in (2 * TILE_PX + 4, 3 * TILE_PX + 2 * 4)  # at least three tiles, or two


# --- in a real browser -------------------------------------------------------------------------------------------


def _browser(download_dir):
    """Headless Chromium (:func:`browser_helpers.chromium`) that downloads into ``download_dir``."""
    d = chromium("the browser test", ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                      "--window-size=1200,1600"),
                 prefs={"download.default_directory": str(download_dir), "download.prompt_for_download": False})
    d.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return d


def test_review_in_a_real_browser(scored_example, tmp_path):
    from selenium.webdriver.common.by import By

    out, res = scored_example
    table = find_components(res.scan.hu, res.scan.spacing, res.labels, res.data)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    d = _browser(downloads)
    try:
        d.get((out / "phantom_example.html").as_uri())
        cards = d.find_elements(By.CSS_SELECTOR, "section.card")
        assert [c.get_attribute("data-id") for c in cards] == [c.id for c in table.lesions + table.candidates]
        for card, comp in zip(cards, table.lesions + table.candidates):
            assert card.is_displayed() and card.size["height"] > 100
            imgs = card.find_elements(By.CSS_SELECTOR, "img.grey")
            assert len(imgs) == len(comp.slices)
            assert all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                       for i in imgs), f"a crop of {comp.id} did not render"
            own = card.find_elements(By.CSS_SELECTOR, ".own")
            assert all(d.execute_script("return getComputedStyle(arguments[0]).maskImage", o).startswith("url(")
                       for o in own)
        lesions = [c for c in table.lesions if c.agatston > 0]
        reject, relabel, add = lesions[0], lesions[1], table.candidates[0]

        def click(cid, action, artery=None):
            sel = f'section.card[data-id="{cid}"] button[data-action="{action}"]'
            d.find_element(By.CSS_SELECTOR, sel + (f'[data-artery="{artery}"]' if artery else "")).click()

        click(reject.id, "reject")
        click(relabel.id, "relabel", "RCA")
        click(add.id, "add", "LCX")
        expected = res.data["agatston"] - reject.agatston + add.agatston
        live = d.execute_script("return window.cacReview.totals()")
        assert live["total"] == pytest.approx(expected, abs=1e-6)
        assert live["per"]["RCA"] == pytest.approx(relabel.agatston, abs=1e-6)
        shown = d.find_element(By.CSS_SELECTOR, '.bar [data-live="total"]').text
        assert shown == f"{expected:.1f}"
        assert "rejected" in d.find_element(By.CSS_SELECTOR, f'section.card[data-id="{reject.id}"]').get_attribute("class")
        d.find_element(By.ID, "reviewer").send_keys("tester")
        d.find_element(By.ID, "save").click()
        saved = downloads / "phantom_example_review.json"
        for _ in range(100):
            if saved.exists() and saved.stat().st_size:
                break
            time.sleep(0.05)
        assert saved.exists(), "the Save review button downloads <id>_review.json"
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        d.quit()
    review = json.loads(saved.read_text())
    assert review["reviewer"] == "tester" and review["decisions"] == {
        reject.id: {"kind": "lesion", "action": "reject"},
        relabel.id: {"kind": "lesion", "action": "relabel", "artery": "RCA"},
        add.id: {"kind": "candidate", "action": "add", "artery": "LCX"}}
    done = apply_review(out / "phantom_example.json", saved, tmp_path / "reviewed", write_image=False)
    scan = read_scan(res.scan.source_path)
    mask = sitk.GetArrayFromImage(sitk.DICOMOrient(
        sitk.ReadImage(str(tmp_path / "reviewed" / "phantom_example_calcium.nii.gz")), "LPS"))
    truth = agatston.score(scan.hu, scan.spacing, mask)
    assert done.after == truth.agatston == done.data["agatston"]
    assert done.after == pytest.approx(live["total"], abs=1e-6)  # the page's live total agreed
    assert truth.by_label[4].agatston == pytest.approx(relabel.agatston, abs=1e-9)
