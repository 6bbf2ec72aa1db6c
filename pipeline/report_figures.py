"""The run report's pictures as inline SVG: the pipeline graph (graphviz `dot` through pydot, already a TFX
dependency) and the data, training, evaluation and monitoring figures (matplotlib's Agg backend). Pure: no ML
Metadata."""
import dataclasses
import io
import re
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

# Fill colours of the graph's nodes by execution state; a node without an execution in the run was not run.
STATUS_COLOURS = {"COMPLETE": "#b7e4c7", "CACHED": "#d0e2f2", "FAILED": "#f4a5a5", "RUNNING": "#ffe8a3",
                  "CANCELED": "#e0e0e0", "NOT RUN": "#ffffff"}
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"


@dataclasses.dataclass
class GraphNode:
    """One component of the pipeline as the graph draws it."""
    node: str
    status: str                 # an MLMD execution state (COMPLETE, CACHED, FAILED, ...) or "NOT RUN"
    seconds: Optional[float] = None


@dataclasses.dataclass
class GraphEdge:
    """upstream -> downstream, labelled with the input the upstream feeds ("" for an ordering-only edge)."""
    upstream: str
    downstream: str
    label: str = ""


def inline_svg(svg: str, prefix: str) -> str:
    """An SVG document as an element to paste into HTML: no XML prolog, DOCTYPE, comments, RDF metadata or
    namespace URLs (the HTML parser puts <svg> in the SVG namespace itself), so the page names no URL at all;
    its ids (matplotlib's "figure_1", "axes_1", ...) prefixed so that several figures on one page never share one."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    svg = re.sub(r'\bid="([^"]*)"', rf'id="{prefix}-\1"', svg)
    return re.sub(r'(url\(#|href="#)([^)"]*)', rf"\1{prefix}-\2", svg).strip()


def pipeline_graph_svg(nodes: Sequence[GraphNode], edges: Sequence[GraphEdge], figure_id: str = "graph") -> str:
    """The pipeline DAG, top to bottom, each component filled by its status and labelled with its time."""
    import pydot  # pylint: disable=g-import-not-at-top  (only the graph needs it)
    q = _quoted
    graph = pydot.Dot(graph_type="digraph", rankdir="TB", bgcolor="transparent", nodesep=q("0.35"),
                      ranksep=q("0.45"))
    graph.set_node_defaults(shape="box", fontname=q(FONT), fontsize="11", penwidth=q("1.2"))
    graph.set_edge_defaults(fontname=q(FONT), fontsize="9", color=q("#555555"), fontcolor=q("#555555"),
                            arrowsize=q("0.7"))
    for n in nodes:
        time = "" if n.seconds is None else f" {n.seconds:.1f}s"
        graph.add_node(pydot.Node(
            q(n.node), label=q(f"{n.node}\n{n.status}{time}"), id=q(f"node-{n.node}"),
            fillcolor=q(STATUS_COLOURS.get(n.status, "#eeeeee")),
            style=q("rounded,filled,dashed" if n.status == "NOT RUN" else "rounded,filled")))
    for e in edges:
        graph.add_edge(pydot.Edge(q(e.upstream), q(e.downstream), label=q(e.label),
                                  style="solid" if e.label else "dashed"))
    return inline_svg(graph.create_svg().decode(), figure_id)


def _quoted(text: str) -> str:
    """A DOT string literal: pydot 1.4 passes names and most attribute values through unquoted."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _figure(width: float, height: float, columns: int = 1):
    """A matplotlib figure on the Agg canvas (never pyplot: no global state, no GUI backend)."""
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  (slow import)
    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.subplots(1, columns, squeeze=False)[0]


def _svg(figure, figure_id: str) -> str:
    """The figure as inline SVG, text kept as text (no glyph definitions whose ids would clash across figures)."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    out = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "font.family": "DejaVu Sans"}):
        figure.savefig(out, format="svg", metadata={"Date": None})
    return inline_svg(out.getvalue(), figure_id)


def histograms_svg(figure_id: str, title: str, features: Mapping[str, np.ndarray], labels: np.ndarray,
                   classes: Sequence[str]) -> str:
    """One panel per feature: its distribution for each class (same bins for all classes)."""
    figure, axes = _figure(3.0 * len(features), 2.6, len(features))
    for ax, (name, values) in zip(axes, features.items()):
        finite = values[np.isfinite(values)]
        edges = np.histogram_bin_edges(finite, bins="auto") if finite.size else np.linspace(0, 1, 2)
        if len(edges) > 41:
            edges = np.linspace(edges[0], edges[-1], 41)
        for species in classes:
            chosen = values[(labels == species) & np.isfinite(values)]
            ax.hist(chosen, bins=edges, histtype="stepfilled", alpha=0.45, label=f"{species} ({chosen.size})")
        ax.set_xlabel(name)
        ax.set_ylabel("examples")
    axes[0].legend(fontsize=7, loc="upper right")
    figure.suptitle(title, fontsize=10)
    return _svg(figure, figure_id)


def training_curves_svg(figure_id: str, curves: Mapping[str, Mapping[str, Sequence[Tuple[int, float]]]]) -> str:
    """One panel per metric (e.g. loss, accuracy) with a line per data split (train, validation), by step."""
    figure, axes = _figure(4.2 * len(curves), 2.8, len(curves))
    for ax, (metric, by_split) in zip(axes, curves.items()):
        for split, points in by_split.items():
            steps, values = zip(*points)
            ax.plot(steps, values, marker="." if len(points) < 40 else None, label=split)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _svg(figure, figure_id)


def confusion_matrix_svg(figure_id: str, title: str, matrix: np.ndarray, classes: Sequence[str]) -> str:
    """Counts of eval examples by actual (rows) and predicted (columns) class, darker for more."""
    figure, (ax,) = _figure(3.4, 3.0)
    ax.imshow(matrix, cmap="Blues", vmin=0)
    high = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        ax.text(column, row, f"{count:g}", ha="center", va="center", color="white" if count > high else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=20)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title, fontsize=10)
    return _svg(figure, figure_id)


def matrix_from_entries(entries: Sequence[Tuple[int, int, float]], size: int) -> np.ndarray:
    """A size x size count matrix from (actual id, predicted id, count) entries (TFMA's sparse form)."""
    matrix = np.zeros((size, size))
    for actual, predicted, count in entries:
        if 0 <= actual < size and 0 <= predicted < size:
            matrix[actual, predicted] += count
    return matrix


@dataclasses.dataclass
class Histogram:
    """Buckets of one feature's values (TFDV's numeric histogram): [low, high) edges and the count in each."""
    lows: np.ndarray
    highs: np.ndarray
    counts: np.ndarray


def densities(histogram: Histogram, zero_width: float) -> Tuple[np.ndarray, np.ndarray]:
    """(bar widths, heights) of a histogram as a density: each bar's area is its bucket's share of the values.
    TFDV gives a constant feature one bucket of zero width: it is drawn `zero_width` wide, not infinitely tall."""
    widths = np.where(histogram.highs > histogram.lows, histogram.highs - histogram.lows, zero_width)
    total = histogram.counts.sum()
    return widths, (histogram.counts / total / widths if total else np.zeros_like(widths))


def distributions_svg(figure_id: str, title: str, xlabel: str, histograms: Mapping[str, Histogram]) -> str:
    """Several distributions of one feature (e.g. training, serving) on one axis as densities, so that histograms
    with different bucket edges compare fairly."""
    figure, (ax,) = _figure(3.4, 2.6)
    known = [h for h in histograms.values() if h.counts.size]
    span = max((h.highs.max() for h in known), default=1.0) - min((h.lows.min() for h in known), default=0.0)
    for i, ((name, histogram), colour) in enumerate(zip(histograms.items(), ("#4c72b0", "#dd8452", "#55a868"))):
        widths, heights = densities(histogram, (span or 1.0) / 100)
        # the first filled, the others outlined: where they coincide both stay visible
        ax.bar(histogram.lows, heights, width=widths, align="edge", fill=i == 0, color=colour,
               alpha=0.5 if i == 0 else 1.0, edgecolor=colour, linewidth=0.8 if i == 0 else 1.4,
               label=f"{name} ({histogram.counts.sum():,.0f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title, fontsize=9)
    return _svg(figure, figure_id)


def shares_svg(figure_id: str, title: str, shares: Mapping[str, Mapping[str, float]], classes: Sequence[str]) -> str:
    """Grouped bars: each class's share in each of several mixes (e.g. training labels, predicted species)."""
    figure, (ax,) = _figure(3.8, 2.6)
    width = 0.8 / max(len(shares), 1)
    for i, (name, mix) in enumerate(shares.items()):
        positions = np.arange(len(classes)) + (i - (len(shares) - 1) / 2) * width
        values = [mix.get(c, 0.0) for c in classes]
        ax.bar(positions, values, width=width, label=name)
        for x, value in zip(positions, values):
            ax.text(x, value, f"{value:.0%}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_ylabel("share")
    ax.set_ylim(0, 1.12)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title, fontsize=9)
    return _svg(figure, figure_id)
