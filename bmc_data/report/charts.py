"""The page's figures: edit-distance histograms and the split bars, drawn as inline SVG here so that the page
needs no chart library and no network."""

from __future__ import annotations

import html

import numpy as np

# the hatch of the "before" bars, defined once per page (an id may appear only once in a document)
HATCH_DEFS = ('<svg class="defs" width="0" height="0" aria-hidden="true" focusable="false"><defs>'
              '<pattern id="hatch" width="4" height="4" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
              '<rect width="4" height="4" class="hb"/><line x1="0" y1="0" x2="0" y2="4" class="hl"/></pattern>'
              '</defs></svg>')


def histogram_svg(before: np.ndarray, after: np.ndarray, *, title: str, xlabel: str, unit: bool,
                  keys: tuple[str, str] | None = None) -> str:
    """Paired before/after histogram. With `keys` (the page's index fields of the two values), each bar is a
    button of the page: clicking it filters the list to the rows in that bin."""
    W, H, L, R, T, B = 460, 240, 48, 12, 44, 40
    values = np.concatenate([before, after]) if len(before) else np.zeros(1)
    hi = 1.0 if unit else float(max(1.0, np.quantile(values, 0.99)))
    bins = 30
    edges = np.linspace(0.0, hi, bins + 1)
    hb = np.histogram(np.clip(before, 0, hi), bins=edges)[0]
    ha = np.histogram(np.clip(after, 0, hi), bins=edges)[0]
    top = max(1, int(max(hb.max(initial=0), ha.max(initial=0))))
    pw, ph = W - L - R, H - T - B
    bw = pw / bins

    def y(v: float) -> float:
        return T + ph - ph * v / top

    # bars that are buttons cannot sit inside an image: a clickable chart is a group
    parts = [f'<svg class="hist" viewBox="0 0 {W} {H}" role="{"group" if keys else "img"}" '
             f'aria-label="{html.escape(title)}">',
             f'<title>{html.escape(title)}</title>',
             f'<text x="{L}" y="16" class="ct">{html.escape(title)}</text>']
    for k in range(bins):
        x = L + k * bw
        for j, (v, cls, dx) in enumerate(((hb[k], "before", 0.0), (ha[k], "after", bw / 2))):
            if v:
                # the last bin also holds everything clipped into it (values above p99)
                hi_attr = "" if k == bins - 1 else f"{edges[k + 1]:.6g}"
                data = (f' data-key="{keys[j]}" data-lo="{edges[k]:.6g}" data-hi="{hi_attr}"' if keys else "")
                parts.append(f'<rect class="{cls}"{data} x="{x + dx:.1f}" y="{y(v):.1f}" width="{bw / 2 - 0.5:.1f}" '
                             f'height="{T + ph - y(v):.1f}"><title>{cls}: {int(v)} pairs in '
                             f'[{edges[k]:.3g}, {edges[k + 1]:.3g})' + (' (click to show them)' if keys else '')
                             + '</title></rect>')
    parts.append(f'<line class="ax" x1="{L}" y1="{T + ph}" x2="{L + pw}" y2="{T + ph}"/>')
    parts.append(f'<line class="ax" x1="{L}" y1="{T}" x2="{L}" y2="{T + ph}"/>')
    for frac in (0, 0.5, 1):
        xv = hi * frac
        label = f"{xv:.2g}" if unit else f"{xv:.0f}" + ("+" if frac == 1 else "")
        parts.append(f'<text class="tk" x="{L + pw * frac:.1f}" y="{T + ph + 14}" text-anchor="middle">{label}</text>')
    parts.append(f'<text class="tk" x="{L - 6}" y="{T + 4}" text-anchor="end">{top}</text>')
    parts.append(f'<text class="tk" x="{L - 6}" y="{T + ph}" text-anchor="end">0</text>')
    parts.append(f'<text class="tk" x="{L + pw / 2}" y="{H - 6}" text-anchor="middle">{html.escape(xlabel)}</text>')
    legend = [("before", f"before: y_w vs y_l (median {np.median(before) if len(before) else 0:.3g})"),
              ("after", f"after: ỹ_w vs y_l (median {np.median(after) if len(after) else 0:.3g})")]
    for j, (cls, text) in enumerate(legend):
        x0 = L + j * pw / 2
        parts.append(f'<rect class="{cls}" x="{x0:.1f}" y="24" width="10" height="10"/>'
                     f'<text class="tk" x="{x0 + 14:.1f}" y="33">{html.escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def splits_svg(before: np.ndarray, after: np.ndarray, n: int = 6) -> str:
    """Paper Fig. 5: mean distance before/after in n equal-size splits by increasing distance before."""
    if len(before) < n:
        return ""
    order = np.argsort(before, kind="stable")
    parts_idx = np.array_split(order, n)
    mb = [float(before[p].mean()) for p in parts_idx]
    ma = [float(after[p].mean()) for p in parts_idx]
    W, H, L, R, T, B = 460, 240, 48, 12, 44, 40
    pw, ph = W - L - R, H - T - B
    top = max(max(mb), max(ma), 1e-9)
    gw = pw / n
    title = f"{n} equal-size splits by edit distance before (paper Fig. 5)"
    out = [f'<svg class="hist" viewBox="0 0 {W} {H}" role="img" aria-label="{html.escape(title)}">',
           f'<text x="{L}" y="16" class="ct">{html.escape(title)}</text>']
    for k in range(n):
        for v, cls, dx in ((mb[k], "before", 0.15), (ma[k], "after", 0.5)):
            h = ph * v / top
            out.append(f'<rect class="{cls}" x="{L + gw * (k + dx):.1f}" y="{T + ph - h:.1f}" width="{gw * 0.35:.1f}" '
                       f'height="{h:.1f}"><title>split {k + 1} {cls}: mean {v:.3g}</title></rect>')
        out.append(f'<text class="tk" x="{L + gw * (k + 0.5):.1f}" y="{T + ph + 14}" '
                   f'text-anchor="middle">{k + 1}</text>')
    out.append(f'<line class="ax" x1="{L}" y1="{T + ph}" x2="{L + pw}" y2="{T + ph}"/>')
    out.append(f'<text class="tk" x="{L - 6}" y="{T + 4}" text-anchor="end">{top:.3g}</text>')
    for j, (cls, text) in enumerate((("before", "before: y_w vs y_l"), ("after", "after: ỹ_w vs y_l"))):
        x0 = L + j * pw / 2
        out.append(f'<rect class="{cls}" x="{x0:.1f}" y="24" width="10" height="10"/>'
                   f'<text class="tk" x="{x0 + 14:.1f}" y="33">{text}</text>')
    out.append(f'<text class="tk" x="{L + pw / 2}" y="{H - 6}" text-anchor="middle">split 1 (most similar y_w, y_l) '
               f'… {n}; bars: mean word edit distance</text></svg>')
    return "".join(out)


