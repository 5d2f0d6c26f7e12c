"""The evaluation report: one self-contained HTML page of a challenger against the champion.

A metrics table and ROC curves drawn as inline SVG: no plotting library, no external file, so the page
opens from the MLflow run's artifacts as it is.
"""

from __future__ import annotations

import html

import numpy as np

from continuous_training.metrics import METRICS

_ROC_POINTS = 200


def _roc_points(y: np.ndarray, scores: np.ndarray) -> list[tuple[float, float]]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, scores)
    if len(fpr) > _ROC_POINTS:
        # Keep the curve's shape with a bounded number of points (the page stays small).
        idx = np.unique(np.linspace(0, len(fpr) - 1, _ROC_POINTS).round().astype(int))
        fpr, tpr = fpr[idx], tpr[idx]
    return list(zip(fpr.tolist(), tpr.tolist(), strict=True))


def _roc_svg(curves: list[tuple[str, str, list[tuple[float, float]]]]) -> str:
    size, pad = 320, 40
    plot = size - 2 * pad

    def xy(fx: float, fy: float) -> str:
        return f"{pad + fx * plot:.1f},{pad + (1 - fy) * plot:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" role="img" '
        'aria-label="ROC curves">',
        f'<rect x="{pad}" y="{pad}" width="{plot}" height="{plot}" fill="none" stroke="#999"/>',
        f'<line x1="{pad}" y1="{pad + plot}" x2="{pad + plot}" y2="{pad}" stroke="#ccc" stroke-dasharray="4"/>',
        f'<text x="{size / 2}" y="{size - 8}" text-anchor="middle" font-size="12">false positive rate</text>',
        f'<text x="12" y="{size / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 12 {size / 2})">true positive rate</text>',
    ]
    for i, (label, colour, points) in enumerate(curves):
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
            f'points="{" ".join(xy(x, y) for x, y in points)}"/>'
        )
        parts.append(
            f'<text x="{pad + plot - 4}" y="{pad + plot - 8 - 16 * i}" text-anchor="end" font-size="12" '
            f'fill="{colour}">{html.escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_report(
    *,
    run_id: str,
    model_name: str,
    holdout_days: list[str],
    y: np.ndarray,
    challenger: tuple[dict[str, float], np.ndarray],
    champion: tuple[dict[str, float], np.ndarray] | None,
    champion_version: str | None,
    champion_error: str | None,
) -> str:
    """The evaluation report: one self-contained HTML page (metrics table and ROC curves as SVG).

    Args:
        run_id: the challenger's run.
        model_name: the registered model name.
        holdout_days: the days scored.
        y: the holdout labels.
        challenger: ``(metrics, scores)`` of the challenger.
        champion: ``(metrics, scores)`` of the champion, or None.
        champion_version: the champion's version, if there is one.
        champion_error: why the champion could not be scored, if so.

    Returns:
        The HTML text.
    """
    esc = html.escape
    curves = [("challenger", "#d62728", _roc_points(y, challenger[1]))]
    if champion is not None:
        curves.append((f"champion v{champion_version}", "#1f77b4", _roc_points(y, champion[1])))
    header = "<tr><th>metric</th><th>challenger</th>"
    header += (
        f"<th>champion v{esc(str(champion_version))}</th><th>difference</th></tr>" if champion else "</tr>"
    )
    rows = []
    for metric, higher in METRICS.items():
        cells = f"<td>{esc(metric)} ({'higher' if higher else 'lower'} is better)</td>"
        cells += f"<td>{challenger[0][metric]:.4f}</td>"
        if champion is not None:
            diff = challenger[0][metric] - champion[0][metric]
            cells += f"<td>{champion[0][metric]:.4f}</td><td>{diff:+.4f}</td>"
        rows.append(f"<tr>{cells}</tr>")
    if champion_version is None:
        note = "<p>There is no champion yet: only the challenger is shown.</p>"
    elif champion is None:
        note = f"<p>The champion v{esc(champion_version)} could not be scored: {esc(str(champion_error))}</p>"
    else:
        note = ""
    positives = int(np.sum(y))
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>Evaluation of {esc(model_name)} run {esc(run_id[:8])}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}</style>"
        "</head><body>"
        f"<h1>Evaluation of {esc(model_name)}: challenger run {esc(run_id)}</h1>"
        f"<p>Holdout: {esc(', '.join(holdout_days))}: {len(y)} rows, {positives} positive "
        f"({positives / max(len(y), 1):.1%}). Both models are scored on exactly these rows.</p>"
        f"{note}<table>{header}{''.join(rows)}</table>"
        f"<h2>ROC curves</h2>{_roc_svg(curves)}"
        "</body></html>\n"
    )
