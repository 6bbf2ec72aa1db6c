"""The run report: figure and page builders on their own, then real runs' reports opened in headless Chromium with
the network cut off (page loads, no console message, every figure drawn, no URL anywhere in the file)."""
import gzip
import pathlib
import re
from typing import List

import numpy as np
import pytest

from components import constants
from conftest import ANY_URL, FAST_BEAM, IRIS_CSV, figures_in, iris_tfx, run_chromium
from pipeline import report, report_figures, summary

def _ids(svg: str) -> List[str]:
    return re.findall(r'\bid="([^"]*)"', svg)


def test_figures_are_inline_svg_without_urls_or_shared_ids():
    """Two matplotlib figures on one page: no XML prolog, no namespace or metadata URL, no id in common."""
    labels = np.array(list(constants.CLASS_NAMES) * 20)
    features = {"sepal_length": np.linspace(4, 8, 60), "petal_width": np.linspace(0.1, 2.5, 60)}
    first = report_figures.histograms_svg("data-train", "train", features, labels, constants.CLASS_NAMES)
    second = report_figures.training_curves_svg("training", {"loss": {"train": [(10, 1.0), (20, 0.5)]}})
    for svg in (first, second):
        assert svg.startswith("<svg") and svg.endswith("</svg>")
        assert not ANY_URL.search(svg), ANY_URL.search(svg)
    assert "sepal_length" in first and "setosa (20)" in first  # text kept as text: the axis and the legend
    assert _ids(first) and not set(_ids(first)) & set(_ids(second))
    assert all(i.startswith("data-train-") for i in _ids(first))
    for reference in re.findall(r'url\(#([^)]*)\)', first):
        assert reference in _ids(first)


def test_pipeline_graph_shows_each_status_and_time():
    nodes = [report_figures.GraphNode("CsvExampleGen", "COMPLETE", 1.25),
             report_figures.GraphNode("AnomaliesGate", "FAILED", 0.5),
             report_figures.GraphNode("Transform", report.NOT_RUN)]
    edges = [report_figures.GraphEdge("CsvExampleGen", "AnomaliesGate", "examples"),
             report_figures.GraphEdge("AnomaliesGate", "Transform")]
    svg = report_figures.pipeline_graph_svg(nodes, edges)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", svg))
    assert "CsvExampleGen COMPLETE 1.2s" in text or "CsvExampleGen COMPLETE 1.3s" in text
    assert "AnomaliesGate FAILED 0.5s" in text and "Transform NOT RUN" in text and "examples" in text
    assert report_figures.STATUS_COLOURS["FAILED"] in svg and report_figures.STATUS_COLOURS["COMPLETE"] in svg
    assert svg.count('class="edge"') == 2 and not ANY_URL.search(svg)


def test_confusion_matrix_counts():
    matrix = report_figures.matrix_from_entries([(0, 0, 8.0), (1, 1, 9.0), (1, 2, 1.0), (2, 2, 10.0), (5, 0, 3.0)], 3)
    assert matrix.tolist() == [[8, 0, 0], [0, 9, 1], [0, 0, 10]]  # an id out of range is dropped
    svg = report_figures.confusion_matrix_svg("confusion-new", "new model", matrix, constants.CLASS_NAMES)
    assert all(f">{count}<" in svg for count in ("8", "9", "1", "10")) and "predicted" in svg


def test_csv_lines_quotes_the_lines_a_message_names(tmp_path):
    lines = ["sepal_length,sepal_width,petal_length,petal_width,species", "5.1,3.5,1.4,0.2,setosa",
             "500,3.0,1.4,0.2,setosa", "4.9,3.0,1.4,0.2,setosa", "4.7,3.2,1.3,0.2,unknown"]
    plain = tmp_path / "data.csv"
    plain.write_text("\ufeff" + "\r\n".join(lines) + "\r\n")
    packed = tmp_path / "data.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for path in (plain, packed):
        assert list(report.csv_lines(str(path), f"{path} line 3: sepal_length 500 out of range")) == [(3, lines[2])]
        assert [n for n, _ in report.csv_lines(str(path), "lines 1, 3 and 5: ...")] == [1, 3, 5]
        assert [n for n, _ in report.csv_lines(str(path), f"{path} lines 2, 4 and 1,030 more: ...")] == [2, 4]
        assert [n for n, _ in report.csv_lines(str(path), f"{path}:4: species 'x'; {path}:2: ...")] == [2, 4]
    assert list(report.csv_lines(str(plain), "split 'eval': species 'versicolor' has 0 examples")) == []


def _record(nodes: List[summary.NodeResult], **fields) -> report.ReportData:
    """A RunRecord as read_run makes it, for a run whose components ran as `nodes` (no artifacts)."""
    return report.ReportData(summary=summary.RunSummary(run_id="20260101-000000.000001", nodes=nodes, **fields),
                            started="2026-01-01 00:00:00 UTC", data_path=None,
                            pipeline_nodes=[n.node for n in nodes], pipeline_edges=[])


def test_page_of_a_refused_run_says_what_and_where_and_escapes_text():
    message = "the data does not match the schema:\nsplit 'train': feature 'species': <script>alert(1)</script>"
    record = _record([summary.NodeResult("CsvExampleGen", "COMPLETE", 1.0),
                      summary.NodeResult("AnomaliesGate", "FAILED", 0.1, message)])
    page = report.render(record, {"graph": "<svg></svg>"})
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count("The data was refused by AnomaliesGate") == 1
    assert "split &#x27;train&#x27;: feature &#x27;species&#x27;" in page
    assert "Content-Security-Policy" in page and "default-src &#x27;none&#x27;" not in page  # the CSP is raw
    assert "default-src 'none'" in page
    assert "Pushed: nothing" in page and 'id="figure-graph"' in page
    assert "The Trainer did not run" in page and "The Evaluator did not run" in page


# --- real runs in a real browser ------------------------------------------------------------------------------

@pytest.mark.e2e
def test_report_of_a_real_run_opens_offline_with_every_figure(pipeline_run, tmp_path):
    # The session's first run (later tests run again on its workdir, with a baseline then).
    run_id = re.search(r"^Run (\S+)$", pipeline_run.result.stdout, re.M).group(1)
    result = iris_tfx("report", "--workdir", str(pipeline_run.workdir), "--run", run_id)
    assert result.returncode == 0, result.stderr
    path = pathlib.Path(result.stdout.strip().splitlines()[-1].removeprefix("Report: "))
    assert path == pipeline_run.workdir / "reports" / f"{run_id}.html"
    text = path.read_text()
    assert not ANY_URL.search(text), ANY_URL.search(text)
    dom, console = run_chromium(path, tmp_path, "--dump-dom")
    assert console == "", console  # the page runs no script: any console line is a blocked fetch or an error
    # (other tests may have monitored this run's model: test_report_monitoring checks that section)
    assert {name: drawn for name, drawn in figures_in(dom).items() if not name.startswith("monitor-")} == {
        "graph": True, "data-train": True, "data-eval": True, "training": True, "confusion-new": True}
    version = pipeline_run.versions()[0]
    assert f"Iris pipeline run {run_id}" in dom and "Model blessed: <b>yes</b>" in dom
    assert f"(version <b>{version}</b>)" in dom and str(pipeline_run.serving_dir / version) in dom
    for section in ("outcome", "pipeline", "data", "training", "evaluation"):
        assert f'<section id="{section}">' in dom
    evaluation = re.search(r'<section id="evaluation">.*?</section>', dom, re.S).group(0)
    assert evaluation.count('class="pass"') == 4 and 'class="fail"' not in evaluation  # floor 0.9 overall, per species


@pytest.mark.e2e
def test_report_of_refused_data_shows_the_refusal_and_the_rows(tmp_path):
    """A value ExampleGen cannot read: the page quotes the CSV line the error names; an out-of-range value: the
    gate's anomaly in words, the data's figures still drawn, the components after it NOT RUN."""
    rows = IRIS_CSV.read_text().splitlines()
    unreadable = tmp_path / "unreadable.csv"
    unreadable.write_text("\n".join(rows[:8] + ["5.0,wide,1.4,0.2,setosa"] + rows[9:]) + "\n")
    out_of_range = tmp_path / "out_of_range.csv"
    out_of_range.write_text("\n".join(rows[:1] + ["500.0,3.1,1.5,0.1,setosa"] + rows[1:]) + "\n")
    errors = {}
    for data, workdir in ((unreadable, tmp_path / "w1"), (out_of_range, tmp_path / "w2")):
        result = iris_tfx("run", "--data", str(data), "--workdir", str(workdir), *FAST_BEAM)
        assert result.returncode == 1, result.stdout + result.stderr
        # What the CLI passes on: the error it printed ("iris-tfx: error: <node> failed: <message>").
        errors[workdir.name] = re.search(r"failed: (.*)\nNo model was pushed", result.stderr, re.S).group(1)

    page = pathlib.Path(report.write_report(str(tmp_path / "w1"), failure=errors["w1"]))
    dom, console = run_chromium(page, tmp_path, "--dump-dom")
    assert console == "" and not ANY_URL.search(page.read_text())
    assert re.search(r"The data was refused by CsvExampleGen:</b><pre>[^<]*sepal_width[^<]*wide", dom)
    assert "<td class=\"num\">9</td><td><code>5.0,wide,1.4,0.2,setosa</code></td>" in dom
    assert figures_in(dom) == {"graph": True}
    assert re.search(r"CsvExampleGen\s*</text>\s*<text[^>]*>FAILED", dom)

    page = pathlib.Path(report.write_report(str(tmp_path / "w2"), failure=errors["w2"]))
    dom, console = run_chromium(page, tmp_path, "--dump-dom")
    assert console == ""
    assert re.search(r"The data was refused by AnomaliesGate:</b><pre>[^<]*line \d+: sepal_length "
                     r"'500(\.0)?' is above the schema's maximum", dom)  # the browser's DOM: quotes unescaped
    assert figures_in(dom) == {"graph": True, "data-train": True, "data-eval": True}
    assert re.search(r"Transform\s*</text>\s*<text[^>]*>NOT RUN", dom) and "Pushed: nothing" in dom


@pytest.mark.e2e
def test_report_command_refuses_an_unknown_run_or_workdir(pipeline_run, tmp_path):
    """Exit 2 and one line saying what is missing where."""
    for args, error in ((["--workdir", str(tmp_path)], f"--workdir {tmp_path}: no pipeline run recorded there"),
                        (["--workdir", str(pipeline_run.workdir), "--run", "20200101-000000.000000"],
                         f"--workdir {pipeline_run.workdir}: no run with id 20200101-000000.000000")):
        result = iris_tfx("report", *args)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.strip().splitlines()[-1].startswith(f"iris-tfx: error: {error}"), result.stderr
