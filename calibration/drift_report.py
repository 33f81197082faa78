"""``drift --html``: one self-contained HTML file of plots, readable offline.

Plotly draws the figures; its JavaScript is inlined once (no CDN, no
network), so the file opens in any browser on an air-gapped machine. Plots:
error per stage, error per layer (prefix KV cache per decoder layer, cross
K/V per DCAL tensor), error against frame index, accuracy per question type.
"""

from __future__ import annotations

import html
import json


def _stage_figure(report: dict):
    import plotly.graph_objects as go

    stages = report["stages"]
    names = list(stages)
    fig = go.Figure(go.Bar(x=names, y=[stages[n]["rel_l2"] for n in names], name="relative L2"))
    fig.update_layout(title="Relative L2 error per stage", yaxis_title="relative L2")
    return fig


def _layer_figure(report: dict):
    import plotly.graph_objects as go

    layers = report["per_layer"]
    fig = go.Figure()
    prefix = layers["prefix_kv_rel_l2"]
    fig.add_trace(go.Bar(x=[f"layer {i}" for i in prefix], y=list(prefix.values()), name="KV"))
    cross = layers["cross_kv_rel_l2"]
    fig.add_trace(go.Bar(x=list(cross), y=list(cross.values()), name="cross K/V"))
    fig.update_layout(title="Relative L2 error per layer", yaxis_title="relative L2")
    return fig


def _frame_figure(report: dict):
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, stage in report["stages"].items():
        per_frame = stage.get("rel_l2_per_frame") or []
        if per_frame:
            fig.add_trace(go.Scatter(y=per_frame, mode="lines+markers", name=name))
    fig.update_layout(
        title="Error against frame index", xaxis_title="frame", yaxis_title="relative L2"
    )
    return fig


def _accuracy_figure(report: dict):
    import plotly.graph_objects as go

    fig = go.Figure()
    for side, per_type in report["end_to_end"].get("accuracy", {}).items():
        values = [100.0 * a for a in per_type.values()]
        fig.add_trace(go.Bar(x=list(per_type), y=values, name=report.get(side, side)))
    fig.update_layout(title="Accuracy per question type", yaxis_title="%", barmode="group")
    return fig


def html_report(report: dict) -> str:
    """The HTML page for a ``drift`` report (the dict ``--json`` writes)."""
    import plotly.io as pio

    figures = [_stage_figure, _layer_figure, _frame_figure, _accuracy_figure]
    divs = []
    for index, make in enumerate(figures):
        # plotly.js inlined once, with the first figure: no CDN, no network.
        divs.append(pio.to_html(make(report), full_html=False, include_plotlyjs=index == 0))
    e2e = report["end_to_end"]
    summary = {k: v for k, v in e2e.items() if k != "accuracy"}
    title = f"drift of {report['test']} against {report['ref']}"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{report['videos']} videos, {report['questions']} questions</p>"
        f"<pre>{html.escape(json.dumps(summary, indent=2))}</pre>"
        + "".join(f"<div class='plot'>{d}</div>" for d in divs)
        + "</body></html>\n"
    )
