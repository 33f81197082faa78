"""The plots of the drift page: error per layer, error per frame of each video, accuracy.

Each function takes the report dict (``drift --json``) and returns a plotly
figure; ``drift_report`` places them. Frames are numbered within their own
video, so every stage of every video runs over the same x axis.
"""

from __future__ import annotations

from .drift_result import FRAME_STAGES

# Enough lines to tell videos apart; the mean line always covers every video.
MAX_VIDEO_LINES = 12
STAGE_TITLES = {
    "vision_features": "vision features",
    "pooled_embeddings": "pooled embeddings",
    "cross_kv": "cross K/V",
    "logits": "logits",
}


def layer_figure(report: dict):
    """Relative L2 error of the prefix KV cache per decoder layer and of each cross K/V tensor."""
    import plotly.graph_objects as go

    layers = report["per_layer"]
    fig = go.Figure()
    prefix = layers["prefix_kv_rel_l2"]
    fig.add_trace(
        go.Bar(x=[f"layer {i}" for i in prefix], y=list(prefix.values()), name="prefix KV cache")
    )
    cross = layers["cross_kv_rel_l2"]
    fig.add_trace(go.Bar(x=list(cross), y=list(cross.values()), name="cross K/V (per DCAL)"))
    fig.update_layout(yaxis_title="relative L2", height=360, margin={"t": 30})
    return fig


def _frame_line(errors: list[float], name: str, first_panel: bool, line: dict):
    import plotly.graph_objects as go

    return go.Scatter(
        x=list(range(len(errors))),
        y=errors,
        mode="lines" if line.get("dash") else "lines+markers",
        name=name,
        legendgroup=name,
        showlegend=first_panel,  # one legend entry per video, not per panel
        line=line,
    )


def frame_figure(report: dict):
    """One panel per stage: relative L2 per frame index, a line per video and the mean."""
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    titles = [STAGE_TITLES[s] for s in FRAME_STAGES]
    fig = make_subplots(rows=1, cols=len(FRAME_STAGES), subplot_titles=titles)
    palette = qualitative.Plotly
    everything = f"all {report['videos']} videos"
    for col, stage in enumerate(FRAME_STAGES, start=1):
        # The line over all videos first: it heads the legend, above any scrolling.
        mean = report["stages"][stage]["rel_l2_per_frame"]
        bold = {"color": "black", "width": 3, "dash": "dash"}
        fig.add_trace(_frame_line(mean, everything, col == 1, bold), row=1, col=col)
        for rank, video in enumerate(report["per_video"][:MAX_VIDEO_LINES]):
            errors = video["rel_l2_per_frame"][stage]
            thin = {"color": palette[rank % len(palette)], "width": 1}
            fig.add_trace(_frame_line(errors, video["video"], col == 1, thin), row=1, col=col)
        fig.update_xaxes(title_text="frame index within its video", dtick=1, row=1, col=col)
    fig.update_yaxes(rangemode="tozero")  # an error is never negative
    fig.update_yaxes(title_text="relative L2", row=1, col=1)
    fig.update_layout(height=400, margin={"t": 40})
    return fig


def accuracy_figure(report: dict):
    """Accuracy per question type of both sides (only for reports with ground truth)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for side, per_type in report["end_to_end"]["accuracy"].items():
        values = [100.0 * a for a in per_type.values()]
        fig.add_trace(go.Bar(x=list(per_type), y=values, name=report[side]))
    fig.update_layout(
        yaxis_title="% right", yaxis_range=[0, 105], barmode="group", height=360, margin={"t": 30}
    )
    return fig
