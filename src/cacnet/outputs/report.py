"""The HTML review report of a scored scan (``cac score ... -o OUT --report``).

:func:`write_report` writes one self-contained file, ``OUT/<id>.html`` (images embedded, no network
access): the scores, triage and models, one card per lesion and per candidate of the component table
(:mod:`cacnet.components`), and the controls that save ``<id>_review.json`` for ``cac review apply``
(:func:`cacnet.review.apply_review`).

See docs/review.md for what the page shows and how a review is made.
"""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

import agatston

from .._files import write_text_atomic
from ._render import ARTERY_RGB, CALCIUM_WINDOW, CANDIDATE_RGB, outline, png_data_uri, window
from ..components import REVIEW_FORMAT, REVIEW_VERSION, Component, ComponentTable, find_components
from ..io import lesion_position

if TYPE_CHECKING:  # pragma: no cover
    from ..pipeline import ScanResult

__all__ = ["render_report", "write_report", "CROP_MM", "NOT_VALIDATED_NOTICE"]

#: Side of a lesion crop in mm (larger for a lesion that does not fit with a 5 mm margin).
CROP_MM = 40.0
#: The notice every report carries.
NOT_VALIDATED_NOTICE = (
    "The shipped models are not validated on patients. Every calcium example they learned from is synthetic; "
    "real CT entered their training only as scans without coronary calcium. How much real coronary calcium they "
    "find is not known. Check every lesion and candidate before you use this score; it is not a medical device.")

_ARTERIES = tuple(agatston.ARTERY_NAMES.values())  # LM, LAD, LCX, RCA: the scoring core's order
_OWN_SIZE_PX = 240  # overlay resolution of a crop (the grey image keeps the scan's pixels)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % rgb


_COLORS = {name: _hex(ARTERY_RGB[code]) for code, name in agatston.ARTERY_NAMES.items()}
_CAND_COLOR = _hex(CANDIDATE_RGB)
_ROOT_CSS = (":root{" + "".join(f"--{n}:{c};" for n, c in _COLORS.items())
             + f"--cand:{_CAND_COLOR};--ink:#111;--mute:#666;--line:#ccc}}")


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: Optional[float], digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _crop_box(center: float, half: int) -> tuple[int, int]:
    lo = int(round(center)) - half
    return lo, lo + 2 * half + 1


def _take(a2d: np.ndarray, ylo: int, yhi: int, xlo: int, xhi: int, fill: float) -> np.ndarray:
    """a2d[ylo:yhi, xlo:xhi], padded with ``fill`` where the box leaves the image."""
    h, w = a2d.shape
    out = np.full((yhi - ylo, xhi - xlo), fill, dtype=a2d.dtype)
    sy0, sy1, sx0, sx1 = max(ylo, 0), min(yhi, h), max(xlo, 0), min(xhi, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - ylo:sy1 - ylo, sx0 - xlo:sx1 - xlo] = a2d[sy0:sy1, sx0:sx1]
    return out


def _dashed(edge: np.ndarray, period: int = 6) -> np.ndarray:
    yy, xx = np.indices(edge.shape)
    return edge & (((yy + xx) // (period // 2)) % 2 == 0)


def _rgba(mask: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    img = np.zeros(mask.shape + (4,), np.uint8)
    img[mask] = (*rgb, 255)
    return img


class _Geometry:
    """z in mm and DICOM instance numbers of the canonical slices."""

    def __init__(self, scan: Any):
        self.scan = scan
        self.spacing = tuple(float(s) for s in scan.spacing)

    def z_mm(self, z: int) -> float:
        return float(self.scan.image.TransformIndexToPhysicalPoint((0, 0, int(z)))[2])

    def instance(self, z: int) -> Optional[int]:
        if self.scan.slices and 0 <= z < len(self.scan.slices):
            return self.scan.slices[z].get("instance_number")
        return None


def _component_crops(comp: Component, hu: np.ndarray, labels: np.ndarray, geo: _Geometry) -> list[dict[str, Any]]:
    """One entry per slice the component spans: grey crop, context and own outline overlays."""
    shape = hu.shape
    _, dy, dx = geo.spacing
    z, y, x = np.unravel_index(comp.voxels, shape)
    cy, cx = (float(y.min()) + float(y.max())) / 2, (float(x.min()) + float(x.max())) / 2
    half_mm = max(CROP_MM / 2, max((y.max() - y.min() + 1) * dy, (x.max() - x.min() + 1) * dx) / 2 + 5.0)
    hy, hx = int(math.ceil(half_mm / dy)), int(math.ceil(half_mm / dx))
    ylo, yhi = _crop_box(cy, hy)
    xlo, xhi = _crop_box(cx, hx)
    scale = max(1, int(math.ceil(_OWN_SIZE_PX / max(yhi - ylo, xhi - xlo))))
    own_all = np.zeros(shape[1:], bool)
    out = []
    for zi in comp.slices:
        own_all[:] = False
        own_all.ravel()[comp.voxels[z == zi] - zi * shape[1] * shape[2]] = True
        own = _take(own_all, ylo, yhi, xlo, xhi, False)
        grey = window(_take(hu[zi], ylo, yhi, xlo, xhi, -1024.0), CALCIUM_WINDOW)
        lab = _take(labels[zi], ylo, yhi, xlo, xhi, 0)
        ctx = np.zeros(tuple(n * scale for n in own.shape) + (4,), np.uint8)
        for code, rgb in ARTERY_RGB.items():
            m = (lab == code) & ~own
            if m.any():
                ctx[outline(m, scale, 1)] = (*rgb, 200)
        edge = outline(own, scale, 2 if scale >= 3 else 1)
        if comp.kind == "candidate":
            edge = _dashed(edge, 2 * scale + 2)
        out.append({
            "z": int(zi), "z_mm": geo.z_mm(int(zi)), "instance": geo.instance(int(zi)),
            "grey": png_data_uri(grey), "ctx": png_data_uri(ctx) if ctx[..., 3].any() else None,
            "own": png_data_uri(_rgba(edge, (255, 255, 255))),
            "w_mm": (xhi - xlo) * dx, "agatston": float(sum(p.agatston for p in comp.parts if p.slice_index == zi)),
        })
    return out


def _overview(hu: np.ndarray, table: ComponentTable, data: dict[str, Any]) -> dict[str, Any]:
    """A maximum-intensity projection of the heart region with every component's position."""
    shape = hu.shape
    bbox = (((data.get("triage") or {}).get("checks") or {}).get("heart") or {}).get("bbox_zyx")
    spacing = [float(s) for s in (data.get("settings") or {}).get("spacing") or (1.0, 1.0, 1.0)]
    if bbox is None:
        bbox = [[0, shape[0] - 1], [shape[1] // 4, shape[1] - 1 - shape[1] // 4],
                [shape[2] // 4, shape[2] - 1 - shape[2] // 4]]
    lo = [int(b[0]) for b in bbox]
    hi = [int(b[1]) for b in bbox]
    cents = {}
    for c in table.components:
        zz, yy, xx = c.centroid_zyx(shape)
        cents[c.id] = (zz, yy, xx)
        lo = [min(lo[0], int(zz)), min(lo[1], int(yy)), min(lo[2], int(xx))]
        hi = [max(hi[0], int(math.ceil(zz))), max(hi[1], int(math.ceil(yy))), max(hi[2], int(math.ceil(xx)))]
    margin = [0, int(round(15.0 / spacing[1])), int(round(15.0 / spacing[2]))]
    lo = [max(0, a - m) for a, m in zip(lo, margin)]
    hi = [min(n - 1, b + m) for b, m, n in zip(hi, margin, shape)]
    # a square view
    side = max(hi[1] - lo[1], hi[2] - lo[2]) + 1
    for a in (1, 2):
        extra = side - (hi[a] - lo[a] + 1)
        lo[a] = lo[a] - extra // 2
        hi[a] = lo[a] + side - 1
    mip = hu[lo[0]:hi[0] + 1].max(axis=0)
    img = window(_take(mip, lo[1], hi[1] + 1, lo[2], hi[2] + 1, -1024.0), CALCIUM_WINDOW)
    marks = [{"id": c.id, "number": c.number, "kind": c.kind, "y": cents[c.id][1] - lo[1],
              "x": cents[c.id][2] - lo[2]} for c in table.components if c.kind == "candidate" or c.counted]
    return {"png": png_data_uri(img), "h": int(img.shape[0]), "w": int(img.shape[1]), "marks": marks,
            "z": [lo[0], hi[0]], "mm": side * spacing[2], "px_mm": spacing[2]}


_CSS = """
*{box-sizing:border-box}
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--ink);margin:0;
background:#f4f4f4}
main{max-width:1060px;margin:0 auto;padding:0 16px 40px;background:#fff}
h1{font-size:20px;margin:0;padding:14px 0 4px}h2{font-size:16px;margin:22px 0 8px;border-bottom:2px solid #222}
table{border-collapse:collapse}td,th{border-bottom:1px solid var(--line);padding:2px 8px;text-align:right;
vertical-align:top}th{text-align:right;font-weight:600}td.l,th.l{text-align:left}
.bar{position:sticky;top:0;z-index:5;background:#222;color:#fff;display:flex;gap:14px;align-items:center;
padding:6px 16px;flex-wrap:wrap}
.bar b{font-size:15px}.bar button{font:inherit;padding:3px 10px;cursor:pointer}
.bar input{font:inherit;padding:2px 6px;width:150px}
.notice{border:2px solid #b00;background:#fff3f3;padding:8px 12px;margin:10px 0;font-weight:600;color:#700}
.grid{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
.big{font-size:30px;font-weight:700}.sub{color:var(--mute)}
.tri td.verdict-refuse{color:#b00;font-weight:700}.tri td.verdict-warn{color:#a60;font-weight:700}
.warn li{color:#a60}
.ov{position:relative;width:420px;max-width:100%}.ov img{width:100%;display:block;image-rendering:auto}
.ov svg{position:absolute;left:0;top:0;width:100%;height:100%}
.ov circle{fill:none;stroke-width:2}.ov text{font:bold 13px sans-serif;paint-order:stroke;stroke:#000;
stroke-width:3px}
.card{border:1px solid var(--line);border-left:8px solid var(--c);margin:10px 0;padding:8px 10px;
break-inside:avoid;page-break-inside:avoid;background:#fff}
.card.rejected{opacity:.55;border-left-color:#999}.card.rejected .own{background:#999}
.card.candidate:not(.added){border-left-style:dashed}
.card h3{margin:0 0 4px;font-size:15px;display:flex;gap:10px;align-items:baseline;flex-wrap:wrap}
.badge{display:inline-block;padding:0 7px;border-radius:3px;background:var(--c);color:#000;font-weight:700}
.flag{color:#b00;font-weight:700}.state{margin-left:auto;font-weight:700}
.facts{color:#333;margin:2px 0 6px}.facts span{margin-right:14px;white-space:nowrap}
.crops{display:flex;flex-wrap:wrap;gap:6px}
.crop{position:relative;width:150px}.crop .pic{position:relative;width:100%;aspect-ratio:1/1;background:#000}
.crop img,.crop .own{position:absolute;left:0;top:0;width:100%;height:100%}
.crop img.grey{image-rendering:pixelated}
.crop .own{background:var(--c);mask-size:100% 100%;-webkit-mask-size:100% 100%;
-webkit-print-color-adjust:exact;print-color-adjust:exact}
.crop .o{position:absolute;color:#ff0;font:bold 11px sans-serif;text-shadow:0 0 2px #000}
.o.r{left:2px;top:45%}.o.l{right:2px;top:45%}.o.a{top:1px;left:47%}.o.p{bottom:1px;left:47%}
.crop .cap{font-size:11px;color:#333;text-align:center}
.ctl{margin-top:6px;display:flex;gap:6px;flex-wrap:wrap;align-items:center}
.ctl button{font:inherit;padding:2px 9px;cursor:pointer;border:1px solid #888;background:#eee;border-radius:3px}
.ctl button.on{background:#222;color:#fff;border-color:#222}
.ctl button.art{border-left:6px solid var(--a)}
.legend span{margin-right:12px}.sw{display:inline-block;width:12px;height:12px;vertical-align:-1px;
border:2px solid var(--a);margin-right:3px}
.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px}
footer{margin-top:26px;color:var(--mute);font-size:12px}
@media print{
 @page{size:A4;margin:11mm}
 body{background:#fff;font-size:9pt}main{max-width:none;padding:0}
 .bar,.ctl,.noprint{display:none!important}
 .card,.crop,.ov,table{break-inside:avoid}
 .crop{width:34mm}.ov{width:95mm}
 *{-webkit-print-color-adjust:exact;print-color-adjust:exact}
}
"""

_JS = r"""
(function(){
'use strict';
const D = JSON.parse(document.getElementById('cac-data').textContent);
const A = ['LM','LAD','LCX','RCA'];
const byId = {}; D.components.forEach(c => byId[c.id] = c);
const state = {};  // id -> {action, artery}
function art(c){ const s = state[c.id]; return (s && (s.action==='relabel' || s.action==='add')) ? s.artery : c.artery; }
function counted(c){ const s = state[c.id];
  if (c.kind==='lesion') return !(s && s.action==='reject');
  return !!(s && s.action==='add'); }
function category(v){ return v<=0?'A':v<=10?'B':v<=100?'C':v<=400?'D':'E'; }
function drs(per){ const t = A.reduce((s,a)=>s+per[a],0); const n = A.filter(a=>per[a]>0).length;
  const g = t===0?0:t<100?1:t<300?2:3; return g===0?'CAC-DRS A0':'CAC-DRS A'+g+'/N'+n; }
function fmt(v,d){ return (v===null||v===undefined)?'–':v.toFixed(d); }
function totals(){
  const per = {}, vol = {}, mass = {}, n = {}; A.forEach(a=>{per[a]=0;vol[a]=0;mass[a]=D.calibrated?0:null;n[a]=0;});
  D.components.forEach(c=>{ if(!counted(c)) return; const a = art(c); if(!a || !(a in per)) return;
    per[a]+=c.agatston; vol[a]+=c.volume_mm3; if(D.calibrated) mass[a]+=(c.mass_mg||0); if(c.agatston>0) n[a]+=1; });
  const t = A.reduce((s,a)=>s+per[a],0);
  return {per, vol, mass, n, total:t, volume:A.reduce((s,a)=>s+vol[a],0),
          mass_total:D.calibrated?A.reduce((s,a)=>s+mass[a],0):null, category:category(t), drs:drs(per)};
}
function render(){
  const T = totals();
  document.querySelectorAll('[data-live]').forEach(el=>{
    const k = el.dataset.live, a = el.dataset.artery;
    let v;
    if (k==='total') v = fmt(T.total,1); else if (k==='category') v = T.category; else if (k==='drs') v = T.drs;
    else if (k==='volume') v = fmt(T.volume,1); else if (k==='mass') v = fmt(T.mass_total,1);
    else if (k==='a-agatston') v = fmt(T.per[a],1); else if (k==='a-volume') v = fmt(T.vol[a],1);
    else if (k==='a-mass') v = fmt(T.mass[a],1); else if (k==='a-n') v = String(T.n[a]);
    el.textContent = v; });
  const decided = Object.keys(state).filter(k=>state[k] && state[k].action).length;
  document.getElementById('decided').textContent = decided;
  D.components.forEach(c=>{
    const card = document.querySelector('.card[data-id="'+c.id+'"]'); if(!card) return;
    const s = state[c.id] || {}; const a = art(c);
    const col = a ? 'var(--'+a+')' : 'var(--cand)';
    card.style.setProperty('--c', col);
    card.classList.toggle('rejected', c.kind==='lesion' && s.action==='reject');
    card.classList.toggle('added', c.kind==='candidate' && s.action==='add');
    card.querySelectorAll('.ctl button').forEach(b=>{
      const act = b.dataset.action, ba = b.dataset.artery;
      let on = false;
      if (act==='accept') on = s.action==='accept';
      else if (act==='reject') on = s.action==='reject';
      else if (act==='relabel') on = s.action==='relabel' && s.artery===ba;
      else if (act==='add') on = s.action==='add' && s.artery===ba;
      b.classList.toggle('on', on); });
    const badge = card.querySelector('.badge'); if (badge) badge.textContent = a || (c.kind==='candidate' ? 'candidate' : 'no artery');
    const st = card.querySelector('.state');
    st.textContent = c.kind==='lesion'
      ? (s.action==='reject'?'rejected':s.action==='relabel'?'relabelled to '+s.artery:s.action==='accept'?'accepted':'not reviewed')
      : (s.action==='add'?'added as '+s.artery:s.action==='reject'?'kept out':'not added');
    const m = document.querySelector('.ov [data-ref="'+c.id+'"]');
    if (m) { m.style.setProperty('--c', col); m.style.opacity = (counted(c)||c.kind==='candidate')?1:0.35; }
  });
}
function decide(id, action, artery){
  const c = byId[id]; const s = state[id];
  if (s && s.action===action && (s.artery||null)===(artery||null)) { delete state[id]; }
  else if (action==='relabel' && artery===c.artery) { state[id] = {action:'accept'}; }
  else { state[id] = artery ? {action, artery} : {action}; }
  render();
}
function review(){
  const decisions = {};
  Object.keys(state).forEach(id=>{ const s = state[id]; if(!s || !s.action) return;
    const d = {kind: byId[id].kind, action: s.action}; if (s.artery) d.artery = s.artery; decisions[id] = d; });
  const T = totals();
  return {format: D.format, version: D.version, id: D.id, scan_sha256: D.scan_sha256,
          components_sha256: D.components_sha256, reviewer: document.getElementById('reviewer').value || '',
          saved: new Date().toISOString(), decisions,
          page_totals: {agatston: T.total, category: T.category, cac_drs: T.drs, arteries: T.per,
                        note: 'informative only: cac review apply recomputes every score with agatston'}};
}
function save(){
  const text = JSON.stringify(review(), null, 2);
  const blob = new Blob([text], {type: 'application/json'});
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob); a.download = D.id + '_review.json';
  document.body.appendChild(a); a.click();
  setTimeout(()=>{ URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  document.getElementById('saved').textContent = 'saved ' + D.id + '_review.json';
}
document.querySelectorAll('.ctl button').forEach(b=>b.addEventListener('click', ()=>{
  decide(b.closest('.card').dataset.id, b.dataset.action, b.dataset.artery||null); }));
document.getElementById('save').addEventListener('click', save);
document.getElementById('print').addEventListener('click', ()=>window.print());
window.cacReview = {review, decide, totals, save, state};
render();
})();
"""


def _controls(comp: Component) -> str:
    if comp.kind == "lesion":
        btns = ['<button data-action="accept">Accept</button>', '<button data-action="reject">Reject</button>',
                '<span class="sub">artery:</span>']
        btns += [f'<button class="art" style="--a:var(--{a})" data-action="relabel" data-artery="{a}">{a}</button>'
                 for a in _ARTERIES]
    else:
        btns = ['<span class="sub">add as:</span>']
        btns += [f'<button class="art" style="--a:var(--{a})" data-action="add" data-artery="{a}">{a}</button>'
                 for a in _ARTERIES]
        btns.append('<button data-action="reject">Keep out</button>')
    return '<div class="ctl">' + "".join(btns) + "</div>"


def _card(comp: Component, crops: list[dict[str, Any]], n_models: int, scan: Any, shape: tuple[int, ...],
          calibrated: bool, min_area: float = 1.0, min_voxels: int = 1) -> str:
    name = agatston.ARTERY_NAMES.get(comp.label) if comp.label and comp.kind == "lesion" else None
    proposed = agatston.ARTERY_NAMES.get(comp.label) if comp.label and comp.kind == "candidate" else None
    color = f"var(--{name})" if name else "var(--cand)"
    cz, cy, cx = comp.centroid_zyx(shape)
    pos = lesion_position(scan, int(round(cz)), cy, cx)
    title = f"Lesion {comp.number}" if comp.kind == "lesion" else f"Candidate {comp.number}"
    if comp.kind == "lesion":
        votes = "" if comp.votes is None else f"{comp.votes}/{n_models} models"
        flag = (f'<span class="flag">⚑ review: {comp.votes}/{n_models} models voted</span>' if comp.review else "")
    else:
        reasons = sorted({p.reason for p in comp.parts if p.reason})
        votes = (f"{comp.votes}/{n_models} models" + ("" if reasons else " (no majority)") if comp.votes else
                 "no model voted: dense, in the heart region" if comp.source == "heart region" else "no model voted")
        if proposed:
            votes += f", proposed {proposed}"
        if reasons:
            votes += f"; rejected: {'; '.join(_e(r) for r in reasons)}"
        flag = ""
    src = {"reader": ("added by a reader" if comp.kind == "lesion" else "rejected by a reader"),
           "heart region": "", "models": ""}[comp.source]
    max_hu = max(p.max_hu for p in comp.parts)
    counted = sum(1 for p in comp.parts if p.counted)
    facts = [f"Agatston <b>{comp.agatston:.2f}</b>", f"volume {comp.volume_mm3:.1f} mm³",
             f"mass {_fmt(comp.mass_mg, 1)} mg" if calibrated else "mass – (no calibration)",
             f"peak {max_hu:.0f} HU", f"{len(comp.parts)} part(s) on {len(comp.slices)} slice(s), {counted} counted",
             f"LPS {', '.join(f'{v:.1f}' for v in pos['patient_lps_mm'])} mm",
             f"file voxel (i, j, k) {', '.join(f'{v:.0f}' for v in pos['voxel_ijk'])}"]
    if comp.p_coronary is not None:
        votes = (votes + ", " if votes else "") + f"second stage P(coronary) {comp.p_coronary:.2f}"
    if votes:
        facts.insert(4, votes)
    if src:
        facts.append(src)
    if counted == 0:
        facts.insert(1, f"<i>not counted: every part is below {min_area:g} mm² or {min_voxels} voxel(s)</i>")
    pics = []
    for cr in crops:
        inst = f" · IN {cr['instance']}" if cr["instance"] is not None else ""
        ctx = f'<img alt="" src="{cr["ctx"]}">' if cr["ctx"] else ""
        pics.append(
            f'<div class="crop"><div class="pic"><img class="grey" alt="slice {cr["z"]}" src="{cr["grey"]}">{ctx}'
            f'<div class="own" style="mask-image:url({cr["own"]});-webkit-mask-image:url({cr["own"]})"></div>'
            '<span class="o r">R</span><span class="o l">L</span><span class="o a">A</span><span class="o p">P</span>'
            f'</div><div class="cap">slice {cr["z"]} · z {cr["z_mm"]:.1f} mm{inst}<br>'
            f'{cr["w_mm"]:.0f} mm · Agatston {cr["agatston"]:.1f}</div></div>')
    return (f'<section class="card {comp.kind}" data-id="{_e(comp.id)}" data-kind="{comp.kind}" '
            f'style="--c:{color}"><h3><span>{title}</span><span class="badge">{_e(name or ("candidate" if comp.kind == "candidate" else "no artery"))}</span>'
            f'{flag}<span class="state"></span></h3>'
            f'<div class="facts">{" ".join(f"<span>{f}</span>" for f in facts)}</div>'
            f'<div class="crops">{"".join(pics)}</div>{_controls(comp)}'
            f'<div class="mono sub">id {_e(comp.id)}</div></section>')


def render_report(result: "ScanResult", table: Optional[ComponentTable] = None) -> str:
    """The report of a :class:`cacnet.pipeline.ScanResult` as one HTML string.

    Parameters
    ----------
    result : ScanResult
        With ``scan`` (the scan read), ``labels`` and ``data``.
    table : ComponentTable, optional
        Computed with :func:`cacnet.components.find_components` when not given.

    Returns
    -------
    str
        A self-contained HTML document.
    """
    scan, data = result.scan, result.data
    if scan is None:
        raise ValueError("render_report needs the scan (ScanResult.scan); score the scan from a file.")
    hu = np.asarray(scan.hu)
    labels = np.asarray(result.labels)
    if table is None:
        table = find_components(hu, scan.spacing, labels, data, result.triage)
    geo = _Geometry(scan)
    models = data.get("models") or {}
    n_models = int(models.get("models_run") or models.get("n_models") or 0)
    calibrated = (data.get("settings") or {}).get("calibration") is not None
    source = data.get("source") or {}
    cid = str(data.get("id", result.id))

    comps_json, cards = [], {"lesion": [], "rejected": [], "unvoted": []}
    for comp in table.components:
        name = agatston.ARTERY_NAMES.get(comp.label) if comp.label else None
        if comp.kind == "candidate" or comp.counted:  # a mask part too small to count gets a row, not a card
            crops = _component_crops(comp, hu, labels, geo)
            kind = "lesion" if comp.kind == "lesion" else "unvoted" if comp.source == "heart region" else "rejected"
            cards[kind].append(_card(comp, crops, n_models, scan, hu.shape, calibrated,
                                     table.settings["min_area_mm2"], table.settings["min_voxels"]))
        comps_json.append({"id": comp.id, "kind": comp.kind, "number": comp.number,
                           "artery": name if comp.kind == "lesion" else None,
                           "proposed": name if comp.kind == "candidate" else None,
                           "agatston": comp.agatston, "volume_mm3": comp.volume_mm3, "mass_mg": comp.mass_mg,
                           "votes": comp.votes, "review": comp.review, "source": comp.source,
                           "p_coronary": comp.p_coronary,
                           "parts": [{"id": p.id, "z": p.slice_index, "agatston": p.agatston,
                                      "volume_mm3": p.volume_mm3, "mass_mg": p.mass_mg} for p in comp.parts]})
    page = {"format": REVIEW_FORMAT, "version": REVIEW_VERSION, "id": cid, "scan_sha256": source.get("sha256"),
            "components_sha256": table.digest, "calibrated": calibrated, "components": comps_json,
            "scored": {"agatston": data.get("agatston"), "category": data.get("category")}}
    ov = _overview(hu, table, data)

    # header tables
    arts = data.get("arteries") or {}
    rows = []
    for a in _ARTERIES:
        v = arts.get(a) or {}
        rows.append(f'<tr><td class="l"><span class="sw" style="--a:var(--{a})"></span>{a}</td>'
                    f'<td data-live="a-agatston" data-artery="{a}">{_fmt(v.get("agatston"))}</td>'
                    f'<td data-live="a-volume" data-artery="{a}">{_fmt(v.get("volume_mm3"))}</td>'
                    f'<td data-live="a-mass" data-artery="{a}">{_fmt(v.get("mass_mg"))}</td>'
                    f'<td data-live="a-n" data-artery="{a}">{v.get("n_lesions", 0)}</td>'
                    f'<td class="sub">{_fmt(v.get("agatston"))}</td></tr>')
    rows.append(f'<tr><th class="l">total</th><th data-live="total">{_fmt(data.get("agatston"))}</th>'
                f'<th data-live="volume">{_fmt(data.get("volume_mm3"))}</th>'
                f'<th data-live="mass">{_fmt(data.get("mass_mg"))}</th><th>{data.get("n_lesions", 0)}</th>'
                f'<th class="sub">{_fmt(data.get("agatston"))}</th></tr>')
    art_table = ('<table><tr><th class="l">artery</th><th>Agatston</th><th>volume mm³</th><th>mass mg</th>'
                 '<th>lesions</th><th class="sub">as scored</th></tr>' + "".join(rows) + "</table>")
    tri = data.get("triage") or {}
    trows = []
    for name, chk in (tri.get("checks") or {}).items():
        shown = {k: v for k, v in chk.items() if k not in ("verdict", "message")}
        desc = chk.get("message") or ", ".join(f"{k} {v}" for k, v in shown.items() if v is not None)
        trows.append(f'<tr><td class="l">{_e(name)}</td><td class="l verdict-{_e(chk.get("verdict"))}">'
                     f'{_e(chk.get("verdict"))}</td><td class="l">{_e(desc)}</td></tr>')
    tri_table = (f'<p>verdict <b>{_e(tri.get("verdict", "?"))}</b>'
                 + (" — <b>scored with --force despite a refusal</b>" if tri.get("forced") else "") + "</p>"
                 + '<table class="tri">' + "".join(trows) + "</table>")
    warns = data.get("warnings") or []
    warn_html = ('<ul class="warn">' + "".join(f"<li>{_e(w)}</li>" for w in warns) + "</ul>") if warns else \
        "<p>No warnings.</p>"
    meta = data.get("scan") or {}
    acq = [f"{meta.get('format', '?')}", "size " + " × ".join(str(v) for v in meta.get("size_xyz", [])),
           "spacing " + " × ".join(f"{v:.3g}" for v in meta.get("spacing_zyx_mm", [])) + " mm (z, y, x)"]
    for key, label, unit in (("slice_thickness_mm", "thickness", " mm"), ("kvp", "", " kVp"),
                             ("kernel", "kernel ", ""), ("manufacturer", "", ""),
                             ("series_description", "", "")):
        if meta.get(key) not in (None, ""):
            acq.append(f"{label}{meta[key]}{unit}")
    weights = models.get("weights") or []
    model_html = (f"<p>{models.get('n_models', '?')} models ({models.get('models_run', '?')} run), "
                  f"{_e(models.get('backend', ''))} {_e(models.get('provider', ''))} {_e(models.get('precision', ''))}"
                  "; weights " + ", ".join(f'{_e(w["file"])} <span class="mono">{_e(w["sha256"][:12])}</span>'
                                          for w in weights)
                  + "<br>versions: " + ", ".join(f"{_e(k)} {_e(v)}" for k, v in (data.get("versions") or {}).items())
                  + "</p>")
    review_done = data.get("review_outcome")
    reviewed_html = ""
    if review_done:
        d = review_done.get("decisions") or {}
        reviewed_html = (f'<p><b>Reviewed</b> ({_e(review_done.get("review_file"))}'
                         + (f', by {_e(review_done["reviewer"])}' if review_done.get("reviewer") else "")
                         + f'): {d.get("accept", 0)} accepted, {d.get("reject", 0)} rejected, '
                         f'{d.get("relabel", 0)} relabelled, {d.get("add", 0)} added; Agatston '
                         f'{_fmt(review_done.get("agatston_before"))} → {_fmt(review_done.get("agatston_after"))}, '
                         'recomputed with agatston.</p>')
    marks = []
    for m in ov["marks"]:
        comp = table.get(m["id"])
        name = agatston.ARTERY_NAMES.get(comp.label) if comp and comp.label and comp.kind == "lesion" else None
        col = f"var(--{name})" if name else "var(--cand)"
        r = 3.5 / ov["px_mm"]
        dash = ' stroke-dasharray="4 3"' if m["kind"] == "candidate" else ""
        marks.append(f'<g data-ref="{_e(m["id"])}" style="--c:{col}"><circle cx="{m["x"]:.1f}" cy="{m["y"]:.1f}" '
                     f'r="{r:.1f}" style="stroke:var(--c)"{dash}/><text x="{m["x"] + r + 2:.1f}" '
                     f'y="{m["y"] - r:.1f}" style="fill:var(--c)">{_e(m["number"])}</text></g>')
    overview = (f'<div class="ov"><img alt="overview" src="{ov["png"]}"><svg viewBox="0 0 {ov["w"]} {ov["h"]}" '
                f'preserveAspectRatio="none">{"".join(marks)}</svg>'
                '<span class="o" style="position:absolute;left:4px;top:48%;color:#ff0;font-weight:700">R</span>'
                '<span class="o" style="position:absolute;right:4px;top:48%;color:#ff0;font-weight:700">L</span>'
                '<span class="o" style="position:absolute;left:49%;top:2px;color:#ff0;font-weight:700">A</span>'
                '<span class="o" style="position:absolute;left:49%;bottom:2px;color:#ff0;font-weight:700">P</span>'
                f'</div><p class="sub">Maximum-intensity projection of slices {ov["z"][0]}–{ov["z"][1]} '
                f'({ov["mm"]:.0f} mm wide), calcium window {CALCIUM_WINDOW[0]:.0f}..{CALCIUM_WINDOW[1]:.0f} HU. '
                'Solid circles: lesions (numbers as in the cards); dashed: candidates.</p>')
    legend = ('<p class="legend">' + "".join(f'<span><span class="sw" style="--a:var(--{a})"></span>{a}</span>'
                                            for a in _ARTERIES)
              + '<span><span class="sw" style="--a:var(--cand);border-style:dashed"></span>candidate, no artery'
                '</span></p>')
    drs = (data.get("cac_drs") or {}).get("label", "")
    how = (f"Review: per lesion <b>Accept</b>, <b>Reject</b> or pick another artery; per candidate <b>add as</b> an "
           f"artery. Totals update as you go. <b>Save review</b> downloads <code>{_e(cid)}_review.json</code>; "
           f"then run <code>cac review apply {_e(cid)}.json {_e(cid)}_review.json -o reviewed/</code> in the "
           "output folder to recompute every score exactly, write the new mask and report, and add the scan "
           "to a training folder (points.csv).")
    no_sha = "" if source.get("sha256") else (
        '<p class="flag">This result records no scan sha256 (scored from memory): a saved review cannot be applied.'
        "</p>")
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    unmatched = (f'<p class="flag">{len(table.unmatched)} rejected candidate(s) of the result match no component '
                 "of the scan.</p>") if table.unmatched else ""
    if table.left_out:
        unmatched += (f'<p class="flag">{table.left_out} more candidate(s) that a minority of models voted for are '
                      "not listed (only the first by votes and size are).</p>")
    page_json = json.dumps(page, separators=(",", ":")).replace("</", "<\\/")
    n = table.counts(data)
    rule = f"&lt; {table.settings['min_area_mm2']:g} mm²" + (
        f" or &lt; {table.settings['min_voxels']} voxels" if table.settings["min_voxels"] > 1 else "")
    summary = [f"{n['lesions']} lesion(s)", f"{n['flagged']} flagged for review"]
    if n["uncounted"]:
        summary.append(f"{n['uncounted']} not counted ({rule})")
    summary.append(f"{n['rejected_candidates']} rejected candidate(s)")
    if n["unvoted"]:
        summary.append(f"{n['unvoted']} unvoted dense spot(s)")
    uncounted = ""
    if n["uncounted"]:
        urows = "".join(
            f'<tr data-id="{_e(c.id)}"><td class="l">{_e(c.number)}</td>'
            f'<td class="l">{_e(agatston.ARTERY_NAMES.get(c.label, c.label))}</td>'
            f'<td>{", ".join(str(z) for z in c.slices)}</td><td>{c.n_voxels}</td>'
            f'<td>{max(p.area_mm2 for p in c.parts):.2f}</td><td>{max(p.max_hu for p in c.parts):.0f}</td>'
            f'<td class="l mono">{_e(c.id)}</td></tr>' for c in table.uncounted)
        uncounted = (f'<h3>Not counted ({rule}): {n["uncounted"]}</h3>'
                     '<p class="sub">Parts of the mask whose every slice is below the minimum area or voxels of '
                     "the Agatston rule: they add nothing to any score and are not lesions (grey, unnumbered in "
                     "the preview).</p>"
                     '<table class="uncounted"><tr><th class="l">#</th><th class="l">artery</th><th>slice(s)</th>'
                     '<th>voxels</th><th>largest area mm²</th><th>peak HU</th><th class="l">id</th></tr>'
                     + urows + "</table>")
    n_rej, n_groups = n["rejected_candidates"], n["rejected_groups"]
    grouped = (f" Shown as {n_groups} candidate(s), C1–C{n_groups}: parts that touch in 3D are one."
               if n_groups and n_groups != n_rej else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Calcium review — {_e(cid)}</title>
<style>{_ROOT_CSS}{_CSS}</style></head>
<body>
<div class="bar noprint"><b>{_e(cid)}</b>
<span>Agatston <b data-live="total">{_fmt(data.get("agatston"))}</b> (<span data-live="category">{_e(data.get("category"))}</span>,
<span data-live="drs">{_e(drs)}</span>)</span>
<span><span id="decided">0</span> decided</span>
<label>reviewer <input id="reviewer" placeholder="name (optional)"></label>
<button id="save">Save review</button><button id="print">Print</button><span id="saved"></span></div>
<main>
<h1>Coronary artery calcium — {_e(cid)}</h1>
<p class="sub">{_e(" · ".join(acq))}<br>report written {created} by cac-toolkit; scan sha256
<span class="mono">{_e((source.get("sha256") or "unknown")[:16])}…</span></p>
<div class="notice">{_e(NOT_VALIDATED_NOTICE)}</div>
{reviewed_html}{no_sha}
<div class="grid">
<div><div class="sub">Agatston (with your review)</div><div class="big" data-live="total">{_fmt(data.get("agatston"))}</div>
<div>category <b data-live="category">{_e(data.get("category"))}</b> · <b data-live="drs">{_e(drs)}</b></div>
<div class="sub">as scored: {_fmt(data.get("agatston"))} ({_e(data.get("category"))}, {_e(drs)})</div>
<div class="sub">{" · ".join(summary)}</div></div>
<div>{art_table}</div>
</div>
<h2>Overview</h2>
<div class="grid"><div>{overview}</div><div style="flex:1;min-width:260px">{legend}<p>{how}</p></div></div>
<h2>Triage</h2>{tri_table}
<h2>Warnings</h2>{warn_html}
<h2>Models</h2>{model_html}{unmatched}
<h2>Lesions ({n["lesions"]})</h2>
{"".join(cards["lesion"]) or "<p>No lesion: the models found no coronary calcium.</p>"}
{uncounted}
<h2>Rejected candidates ({n_rej})</h2>
<p class="sub">The result's rejected candidates: {n_rej} dense part(s) (≥ {table.settings["threshold_hu"]:g} HU, one
per slice, as the result's <code>rejected_candidates</code> lists them) that models voted for without calling them
calcium, or that a reader rejected.{grouped} Add one if it is coronary calcium.</p>
{"".join(cards["rejected"]) or "<p>None.</p>"}
<h2>Not voted for ({n["unvoted"]})</h2>
<p class="sub">The largest dense components (≥ {table.settings["threshold_hu"]:g} HU) in the heart region that no
model voted for, H1, H2, …: not in the result's <code>rejected_candidates</code>, shown so that a miss is visible.
Add one if it is coronary calcium.</p>
{"".join(cards["unvoted"]) or "<p>None.</p>"}
<footer>Crops: {CROP_MM:.0f} mm (more for a longer lesion), calcium window {CALCIUM_WINDOW[0]:.0f}..{CALCIUM_WINDOW[1]:.0f} HU,
radiological view (patient's right on the left, anterior up). Slice numbers are indices of the scan along z
(patient LPS, feet to head); z is the slice position in mm; IN is the DICOM instance number. Component ids are the
first voxel (z-y-x) of each component on that grid. {_e(NOT_VALIDATED_NOTICE)}</footer>
</main>
<script type="application/json" id="cac-data">{page_json}</script>
<script>{_JS}</script>
</body></html>
"""


def write_report(result: "ScanResult", path: Path | str, table: Optional[ComponentTable] = None) -> Path:
    """Write :func:`render_report` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    write_text_atomic(path, render_report(result, table))
    return path
