"""The pages' charts: Plotly figures as HTML fragments (the script itself is served once, by the app).

Plotly is the library Evidently draws its reports with, so it is installed already; a fragment is a
``<div>`` and a short script that draws into it, with the figure's data inline.
"""

from __future__ import annotations

from typing import Any

_CONFIG = {"displaylogo": False, "responsive": True}
_LAYOUT = {"margin": {"l": 60, "r": 20, "t": 30, "b": 40}, "height": 360, "template": "plotly_white"}


def _html(fig: Any) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config=_CONFIG)


def scores_over_time(runs: list[dict[str, Any]]) -> str:
    """Each column's drift score per monitor run, over time, with the threshold; "" without runs."""
    import plotly.graph_objects as go

    if not runs:
        return ""
    ordered = sorted(runs, key=lambda run: run["at"])
    columns = sorted({c for run in ordered for c in run["scores"]})
    fig = go.Figure()
    for column in columns:
        fig.add_trace(
            go.Scatter(
                x=[run["at"] for run in ordered],
                y=[run["scores"].get(column) for run in ordered],
                mode="lines+markers",
                name=column,
            )
        )
    thresholds = {run["threshold"] for run in ordered if run["threshold"] is not None}
    for threshold in thresholds:
        fig.add_hline(
            y=threshold, line_dash="dash", line_color="#b00", annotation_text=f"threshold {threshold}"
        )
    fig.update_layout(**_LAYOUT, yaxis_title="drift score", legend={"font": {"size": 10}})
    return _html(fig)


def column_scores(run: dict[str, Any]) -> str:
    """One monitor run's score per column, highest first, drifted columns in red, with the threshold."""
    import plotly.graph_objects as go

    columns = run["columns"]
    if not columns:
        return ""
    fig = go.Figure(
        go.Bar(
            x=[c["score"] for c in columns][::-1],
            y=[c["column"] for c in columns][::-1],
            orientation="h",
            marker_color=["#c0392b" if c["drifted"] else "#2e86c1" for c in columns][::-1],
        )
    )
    if run["threshold"] is not None:
        fig.add_vline(x=run["threshold"], line_dash="dash", line_color="#b00")
    fig.update_layout(**{**_LAYOUT, "height": 120 + 22 * len(columns)}, xaxis_title="drift score")
    return _html(fig)


def metric_over_versions(versions: list[dict[str, Any]], metric: str) -> str:
    """Each version's holdout metric (passed the gate: green, blocked: red) beside the champion's of
    its time, champions ringed; "" without versions."""
    import plotly.graph_objects as go

    judged = sorted((v for v in versions if v["verdict"]), key=lambda v: int(v["version"]))
    if not judged:
        return ""
    x = [f"v{v['version']}" for v in judged]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[v["verdict"].get("champion_value") for v in judged],
            mode="lines",
            name="champion of the time",
            line={"color": "#888", "dash": "dot"},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[v["metric_value"] for v in judged],
            mode="markers+lines",
            name=f"version ({metric} on its holdout)",
            marker={
                "size": [14 if v["champion"] else 9 for v in judged],
                "color": ["#1a7f37" if v["verdict"].get("passed") else "#c0392b" for v in judged],
                "line": {"width": [3 if v["champion"] else 0 for v in judged], "color": "#017cee"},
            },
            text=[v["reason"] or "" for v in judged],
        )
    )
    floors = {v["verdict"].get("floor") for v in judged if v["verdict"].get("floor") is not None}
    for floor in floors:
        fig.add_hline(y=floor, line_dash="dash", line_color="#b00", annotation_text=f"floor {floor}")
    fig.update_layout(**_LAYOUT, yaxis_title=metric)
    return _html(fig)
