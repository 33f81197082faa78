"""``drift --html``: one self-contained HTML page that a person reads top to bottom.

Order: the verdict against the budget, the stage table (the figures the
terminal prints), the end-to-end figures, error per layer, error per frame of
each video, accuracy per question type (only where ground truth exists), the
questions whose answers changed with a frame of their video, and the full
JSON last. Nothing is loaded from the network: plotly.js is inlined once and
the frames are data: URIs, so the file opens on an air-gapped machine.
"""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np

from .drift_figures import (
    MAX_VIDEO_LINES,
    STAGE_TITLES,
    accuracy_figure,
    frame_figure,
    layer_figure,
)

MAX_CHANGED_ROWS = 200
THUMBNAIL_PIXELS = 128
STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:1.5em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{padding:.8em 1.2em;border-radius:6px;margin:1em 0;font-size:1.1em}
.within{background:#e5f5e5;border:2px solid #2a8a2a}.over{background:#fbe4e4;border:2px solid #c22}
.verdict strong{font-size:1.4em;display:block;margin-bottom:.3em}
img.frame{width:96px;height:96px;image-rendering:pixelated;border:1px solid #999}
.note{color:#555}
"""


def frame_thumbnail(pixels: np.ndarray) -> bytes:
    """PNG of the middle frame of preprocessed pixels [T, 3, S, S] (SigLIP scale, -1..1).

    The frame the model saw, at most ``THUMBNAIL_PIXELS`` on a side.
    """
    from PIL import Image

    frame = pixels[len(pixels) // 2].transpose(1, 2, 0)  # [S, S, 3]
    rgb = np.clip(np.rint((frame * 0.5 + 0.5) * 255.0), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _points(value: float, spec: str = "g") -> str:
    return f"{value:{spec}} point" + ("" if value == 1 else "s")


def _verdict(report: dict) -> str:
    verdict = report["verdict"]
    budget = verdict["budget_points"]
    source = (
        "given with --max-drift"
        if verdict["budget_source"] == "--max-drift"
        else "the default; set another with --max-drift POINTS"
    )
    checks = "".join(
        f"<li>{html.escape(c['measure'])}: <b>{_points(c['points'], '.1f')}</b> "
        f"on {c['questions']} questions ({html.escape(c['detail'])})</li>"
        for c in verdict["checks"]
    )
    word, css = ("Within budget", "within") if verdict["within"] else ("Over budget", "over")
    return (
        f"<div class='verdict {css}' id='verdict'><strong>{word}</strong>"
        f"Budget: {_points(budget)} ({source}). Judged on:<ul>{checks}</ul></div>"
    )


def _stage_table(report: dict) -> str:
    rows = []
    for name, stage in report["stages"].items():
        sqnr = "identical" if stage["sqnr_db"] is None else f"{stage['sqnr_db']:.1f} dB"
        cells = (
            f"{stage['cosine_min']:.5f}",
            sqnr,
            f"{stage['rel_l2']:.2e}",
            f"{stage['max_abs']:.2e}",
        )
        numbers = "".join(f"<td class='num'>{c}</td>" for c in cells)
        rows.append(f"<tr><td>{STAGE_TITLES.get(name, html.escape(name))}</td>{numbers}</tr>")
    return (
        "<h2>Error per stage</h2><table id='stages'><thead><tr><th>stage</th>"
        "<th>cosine min</th><th>SQNR</th><th>relative L2</th><th>max abs</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table><p class='note'>cosine min: the lowest cosine "
        "similarity of any token's features; SQNR: 10·log10(signal / noise) over all values "
        "(identical: bit-equal); relative L2: ‖ref − test‖ / ‖ref‖; max abs: the largest "
        "absolute difference. Logits are teacher-forced on the reference's answers.</p>"
    )


def _end_to_end(report: dict) -> str:
    e2e = report["end_to_end"]
    return (
        "<table id='end-to-end'><tr><th>next-token KL</th><th>top-1 agreement</th>"
        "<th>greedy answers identical</th></tr>"
        f"<tr><td class='num'>{e2e['kl_mean']:.2e}</td>"
        f"<td class='num'>{e2e['top1_agreement']:.2%}</td>"
        f"<td class='num'>{e2e['greedy_exact_match']:.2%}</td></tr></table>"
    )


def _plot(fig, div_id: str, with_plotly_js: bool) -> str:
    import plotly.io as pio

    # plotly.js inlined with the first plot only: no CDN, no network, one copy.
    return pio.to_html(
        fig,
        full_html=False,
        include_plotlyjs=with_plotly_js,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True},
    )


def _frames_section(report: dict) -> str:
    drawn = min(report["videos"], MAX_VIDEO_LINES)
    lines = (
        f"a line per video (the first {drawn})" if drawn < report["videos"] else "a line per video"
    )
    return (
        "<h2>Error per frame</h2><p class='note'>Frame 0 is the first frame of each video; "
        f"{lines}; the dashed line is the error over all videos at that frame index.</p>"
        + _plot(frame_figure(report), "frames", False)
    )


def _accuracy(report: dict) -> str:
    truth = report["ground_truth_questions"]
    if not report["end_to_end"]["accuracy"]:
        return (
            "<h2>Accuracy per question type</h2><p class='note' id='no-accuracy'>Not measured: "
            "none of these videos comes with ground truth (answers are known only for "
            "<code>--synthetic</code> videos). The verdict counts changed answers instead.</p>"
        )
    note = f"On the {truth} of {report['questions']} questions that have ground truth."
    return (
        "<h2>Accuracy per question type</h2>"
        f"<p class='note'>{note}</p>{_plot(accuracy_figure(report), 'accuracy', False)}"
    )


def _thumbnail_cell(png: bytes | None, rows: int) -> str:
    if png is None:
        return f"<td rowspan='{rows}'></td>"
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f"<td rowspan='{rows}'><img class='frame' alt='middle frame' src='{uri}'></td>"


def _answer_cell(text: str) -> str:
    # An empty answer (the model stopped at once) must not look like a missing cell.
    return f"<td>{html.escape(text)}</td>" if text.strip() else "<td><i>(empty answer)</i></td>"


def _changed_answers(report: dict, thumbnails: dict[int, bytes]) -> str:
    changed = report["changed_answers"]
    head = "<h2>Answers that changed</h2>"
    if not changed:
        return head + (
            f"<p id='no-changes'>None: both sides gave the same greedy answer to all "
            f"{report['questions']} questions.</p>"
        )
    shown = changed[:MAX_CHANGED_ROWS]
    by_video: dict[int, list[dict]] = {}
    for answer in shown:
        by_video.setdefault(answer["video"], []).append(answer)
    rows = []
    for video, answers in by_video.items():
        name = html.escape(report["per_video"][video]["video"])
        for rank, answer in enumerate(answers):
            lead = _thumbnail_cell(thumbnails.get(video), len(answers)) if rank == 0 else ""
            cells = (name, answer["question"], answer["qtype"], answer["truth"])
            texts = "".join(f"<td>{html.escape(c or '—')}</td>" for c in cells)
            sides = "".join(_answer_cell(answer[side]) for side in ("ref", "test"))
            rows.append(f"<tr class='changed'>{lead}{texts}{sides}</tr>")
    more = len(changed) - len(shown)
    tail = f"<p class='note'>{more} more are in the JSON report.</p>" if more else ""
    return (
        f"{head}<p>{len(changed)} of {report['questions']} answers differ "
        "(the middle frame of each video, as the model saw it).</p>"
        "<table id='changed'><thead><tr><th>frame</th><th>video</th><th>question</th>"
        f"<th>type</th><th>truth</th><th>{html.escape(report['ref'])}</th>"
        f"<th>{html.escape(report['test'])}</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{tail}"
    )


def html_report(report: dict, thumbnails: dict[int, bytes] | None = None) -> str:
    """The HTML page of a ``drift`` report (the dict ``--json`` writes).

    ``thumbnails``: PNG bytes of a frame per video index, shown beside the
    answers that changed (``DriftResult.thumbnails``).
    """
    title = f"Drift of {report['test']} against {report['ref']}"
    truth = report["ground_truth_questions"]
    sample = (
        f"{report['videos']} videos, {report['questions']} questions ({truth} with ground truth)."
    )
    body = [
        f"<h1>{html.escape(title)}</h1><p>{sample}</p>",
        _verdict(report),
        _stage_table(report),
        _end_to_end(report),
        "<h2>Error per layer</h2>" + _plot(layer_figure(report), "layers", True),
        _frames_section(report),
        _accuracy(report),
        _changed_answers(report, thumbnails or {}),
        "<details><summary>Full report (JSON, as <code>--json</code> writes it)</summary>"
        f"<pre>{html.escape(json.dumps(report, indent=2))}</pre></details>",
    ]
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        + "".join(body)
        + "</body></html>\n"
    )
