"""The report's Monitoring section: real TFDV statistics of Fisher's rows (training) and of traffic with the widths
+50% (serving), compared by TFDV and written as a monitor result directory (design: the files pipeline/monitor.py
writes), read back, drawn, rendered, opened in headless Chromium; broken result directories give a note."""
import json
import pathlib
import re
import shutil
from typing import Dict, Optional

import numpy as np
import pandas as pd
import pytest

from components import constants
from conftest import ANY_URL, IRIS_CSV, figures_in, iris_tfx, run_chromium
from pipeline import report, report_figures, report_monitoring, summary

RUN_ID = "20260101-000000.000001"
WIDTHS = ("sepal_width", "petal_width")
JSD, L_INFINITY = 0.1, 0.1  # the comparators' thresholds in these tests (the real ones live in the schema)


def _schema():
    """The curated schema with a skew and drift comparator on each measurement and a skew one on the species."""
    import tensorflow_data_validation as tfdv  # pylint: disable=g-import-not-at-top  (slow import)
    schema = tfdv.load_schema_text(str(IRIS_CSV.parent.parent / constants.DEFAULT_SCHEMA))
    for feature in schema.feature:
        if feature.name == constants.LABEL_KEY:
            feature.skew_comparator.infinity_norm.threshold = L_INFINITY
        else:
            feature.skew_comparator.jensen_shannon_divergence.threshold = JSD
            feature.drift_comparator.jensen_shannon_divergence.threshold = JSD
    return schema


@pytest.fixture(scope="module")
def statistics() -> Dict[str, object]:
    """TFDV statistics of Fisher's rows ("training"), the same rows again ("previous", an earlier window) and of
    the rows with both widths +50% ("shifted"); the species column stands for the predicted species."""
    import tensorflow_data_validation as tfdv  # pylint: disable=g-import-not-at-top
    fisher = pd.read_csv(IRIS_CSV)
    shifted = fisher.copy()
    for name in WIDTHS:
        shifted[name] *= 1.5
    return {"training": tfdv.generate_statistics_from_dataframe(fisher),
            "previous": tfdv.generate_statistics_from_dataframe(fisher),
            "shifted": tfdv.generate_statistics_from_dataframe(shifted)}


def write_result(directory: pathlib.Path, training_uri: str, serving, previous=None) -> dict:
    """A monitor result directory as design13 lays it out, its distances and verdicts TFDV's own."""
    import tensorflow_data_validation as tfdv  # pylint: disable=g-import-not-at-top
    from google.protobuf import text_format
    # The comparators' distances are symmetric, so the window may stand where TFDV expects the training statistics.
    anomalies = tfdv.validate_statistics(serving, _schema(), serving_statistics=tfdv.load_stats_binary(training_uri),
                                         previous_statistics=previous)
    measured = {"/".join(info.path.step): info for info in anomalies.drift_skew_info}

    def comparison(measurements) -> Optional[dict]:
        return None if not measurements else {"distance": measurements[0].value,
                                               "threshold": measurements[0].threshold,
                                               "found": measurements[0].value > measurements[0].threshold}
    features = [{"name": name, "skew": comparison(measured[name].skew_measurements),
                 "drift": comparison(measured[name].drift_measurements), "out_of_domain": 0,
                 "verdict": "skew" if comparison(measured[name].skew_measurements)["found"] else "ok"}
                for name in constants.FEATURE_KEYS]
    mix = {side: {v.value: v.frequency / stats.datasets[0].num_examples for v in next(
        f for f in stats.datasets[0].features if f.path.step == [constants.LABEL_KEY]).string_stats.top_values}
        for side, stats in (("serving", serving), ("training", tfdv.load_stats_binary(training_uri)))}
    species = comparison(measured[constants.LABEL_KEY].skew_measurements)
    directory.mkdir(parents=True)
    (directory / "serving_statistics.pb").write_bytes(serving.SerializeToString())
    if previous is not None:
        (directory / "previous_statistics.pb").write_bytes(previous.SerializeToString())
    (directory / "anomalies.pbtxt").write_text(text_format.MessageToString(anomalies))
    result = {"created": "2026-01-02T10:00:00+00:00", "logs": "/logs/requests/iris", "since": None,
              "window": {"first": "2026-01-02T09:00:00+00:00", "last": "2026-01-02T09:59:59+00:00"},
              "model": {"name": constants.MODEL_NAME, "version": 1767225600}, "run_id": RUN_ID,
              "records": 150, "examples": 150, "training_statistics": training_uri,
              "serving_statistics": "serving_statistics.pb",
              "previous_statistics": "previous_statistics.pb" if previous is not None else None,
              "anomalies": "anomalies.pbtxt", "features": features, "species_mix": {**mix, **species},
              "found": any(f["skew"]["found"] or (f["drift"] or {}).get("found") for f in features)}
    (directory / report_monitoring.RESULT_FILE).write_text(json.dumps(result, indent=1))
    return result


@pytest.fixture
def workdir(tmp_path, statistics) -> pathlib.Path:
    """A workdir with the training statistics and two results of the run: in-distribution, then shifted."""
    training = tmp_path / "pipeline_root" / "StatisticsGen" / "statistics" / "3" / "Split-train" / "FeatureStats.pb"
    training.parent.mkdir(parents=True)
    training.write_bytes(statistics["training"].SerializeToString())
    results = tmp_path / constants.MONITORING_DIR / RUN_ID
    write_result(results / "20260102T090000Z", str(training), statistics["previous"])
    write_result(results / "20260102T100000Z", str(training), statistics["shifted"], statistics["previous"])
    return tmp_path


def _page(workdir: pathlib.Path) -> str:
    """The report page of a run with no artifacts (as test_report builds it) and the workdir's monitoring."""
    record = report.ReportData(summary=summary.RunSummary(run_id=RUN_ID, nodes=[]), started="2026-01-01 00:00 UTC",
                               data_path=None, monitoring=report_monitoring.read(str(workdir), RUN_ID))
    return report.render(record, report.build_figures(record))


def test_newest_result_is_read_with_both_distributions(workdir):
    """The newer (shifted) result is shown: skew found on exactly the widths, drift measured, both histograms."""
    monitoring = report_monitoring.read(str(workdir), RUN_ID)
    assert monitoring.problems == [] and monitoring.results == 2
    assert monitoring.directory.endswith("20260102T100000Z")
    assert [f.name for f in monitoring.features] == list(constants.FEATURE_KEYS)
    assert {f.name for f in monitoring.features if f.skew.found} == set(WIDTHS)
    assert {f.name for f in monitoring.features if f.drift.found} == set(WIDTHS)
    assert all(set(monitoring.histograms[name]) == {"training", "serving"} for name in constants.FEATURE_KEYS)
    serving, training = (monitoring.histograms["sepal_width"][side] for side in ("serving", "training"))
    assert serving.lows[0] == pytest.approx(training.lows[0] * 1.5) and serving.counts.sum() == pytest.approx(150)
    assert monitoring.species is not None and not monitoring.species.found
    assert sum(monitoring.mixes["serving"].values()) == pytest.approx(1.0)
    assert [line.split(":")[0] for line in monitoring.anomalies] == ["petal_width", "sepal_width"]
    assert "Jensen-Shannon divergence between training and serving" in monitoring.anomalies[0]


def test_section_draws_each_feature_and_the_species_mix(workdir):
    page = _page(workdir)
    assert '<section id="monitoring">' in page and not ANY_URL.search(page)
    section = page[page.index('<section id="monitoring">'):]
    names = {report_monitoring.figure_name(name) for name in constants.FEATURE_KEYS} | {"monitor-species"}
    assert set(re.findall(r'<figure id="figure-([^"]+)"', section)) == names
    for name in constants.FEATURE_KEYS:
        figure = re.search(rf'<figure id="figure-monitor-{name}".*?</figure>', section, re.S).group(0)
        assert "training (150)" in figure and "serving (150)" in figure and ">density<" in figure
    assert "served predictions" in section and "training labels" in section
    rows = {m.group(1): m.group(2) for m in re.finditer(r"<tr><td>([a-z_]+)</td>(.*?)</tr>", section)}
    assert set(rows) == set(constants.FEATURE_KEYS)
    assert re.search(r"<tr><td>species \(predicted mix vs training labels\)</td><td class=\"num\">[0-9.]+</td>"
                     r'<td class="num">0.1</td><td class="pass">pass</td><td colspan="3">not checked</td>', section)
    for name in constants.FEATURE_KEYS:
        checks = re.findall(r'<td class="(pass|fail)">', rows[name])
        assert checks == (["fail", "fail"] if name in WIDTHS else ["pass", "pass"]), (name, rows[name])
    assert "Skew or drift found: <b>yes</b>" in section and "version <b>1767225600</b>" in section
    assert "The newest of 2 monitor results of this run: <code>" in section and "(not checked:" not in section
    assert re.search(r"Anomalies \(TFDV[^<]*</p><pre>petal_width: [^<]*\nsepal_width: ", section)


def test_densities_compare_histograms_with_different_buckets():
    """Each bar's area is its bucket's share, whatever the bucket widths; a constant feature's zero-width bucket
    gets a finite bar."""
    coarse = report_figures.Histogram(np.array([0.0]), np.array([4.0]), np.array([10.0]))
    fine = report_figures.Histogram(np.arange(0.0, 4.0, 0.5), np.arange(0.5, 4.5, 0.5), np.full(8, 5.0))
    for histogram in (coarse, fine):
        widths, heights = report_figures.densities(histogram, 0.04)
        assert (widths * heights).sum() == pytest.approx(1.0)
        assert heights == pytest.approx(np.full(len(heights), 0.25))  # both uniform on [0, 4]
    constant = report_figures.Histogram(np.array([3.0]), np.array([3.0]), np.array([150.0]))
    widths, heights = report_figures.densities(constant, 0.04)
    assert widths.tolist() == [0.04] and heights == pytest.approx([25.0])


def test_comparisons_not_measured_say_not_checked(workdir):
    """A feature without a skew comparator (null), a species mix whose skew was not measured (null distance) but
    whose drift was: "not checked" cells, the bars still drawn, the species drift judged."""
    newest = workdir / constants.MONITORING_DIR / RUN_ID / "20260102T100000Z" / report_monitoring.RESULT_FILE
    result = json.loads(newest.read_text())
    result["features"][0]["skew"] = result["features"][0]["drift"] = None
    result["species_mix"].update(distance=None, threshold=None, found=False,
                                 drift={"distance": 0.5, "threshold": 0.1, "found": True})
    newest.write_text(json.dumps(result))
    monitoring = report_monitoring.read(str(workdir), RUN_ID)
    assert monitoring.problems == [] and monitoring.species is None and monitoring.species_drift.found
    section = _page(workdir).split('<section id="monitoring">')[1]
    assert re.search(r'<tr><td>sepal_length</td><td colspan="3">not checked</td><td colspan="3">not checked</td>',
                     section)
    assert re.search(r'<tr><td>species [^<]*</td><td colspan="3">not checked</td><td class="num">0.5000</td>'
                     r'<td class="num">0.1</td><td class="fail">FAIL</td>', section)
    assert 'id="figure-monitor-species"' in section and "sepal_length: not checked" in section


def test_quantiles_stand_in_for_a_missing_equi_width_histogram(workdir, statistics):
    """Statistics without TFDV's equi-width histogram (e.g. made with other options) are drawn from the quantiles."""
    from tensorflow_metadata.proto.v0 import statistics_pb2  # pylint: disable=g-import-not-at-top
    serving = statistics_pb2.DatasetFeatureStatisticsList()
    serving.CopyFrom(statistics["shifted"])
    for feature in serving.datasets[0].features:
        kept = [h for h in feature.num_stats.histograms if h.type == statistics_pb2.Histogram.QUANTILES]
        del feature.num_stats.histograms[:]
        feature.num_stats.histograms.extend(kept)
    newest = workdir / constants.MONITORING_DIR / RUN_ID / "20260102T100000Z"
    (newest / "serving_statistics.pb").write_bytes(serving.SerializeToString())
    monitoring = report_monitoring.read(str(workdir), RUN_ID)
    drawn = monitoring.histograms["petal_length"]["serving"]
    quantiles = next(f for f in serving.datasets[0].features if f.path.step == ["petal_length"]).num_stats.histograms[0]
    assert drawn.lows.tolist() == [b.low_value for b in quantiles.buckets] and drawn.counts.sum() == pytest.approx(150)
    assert len(set(np.round(drawn.highs - drawn.lows, 6))) > 1  # not equi-width
    assert len(monitoring.histograms["petal_length"]["training"].counts) == 10 and monitoring.problems == []


def test_an_infinite_values_bucket_is_left_out_of_the_picture(workdir, statistics):
    """TFDV puts an infinite value (traffic the schema disallows) in a bucket with an infinite edge: the picture
    leaves it out rather than draw an axis to infinity."""
    from tensorflow_metadata.proto.v0 import statistics_pb2  # pylint: disable=g-import-not-at-top
    serving = statistics_pb2.DatasetFeatureStatisticsList()
    serving.CopyFrom(statistics["shifted"])
    feature = next(f for f in serving.datasets[0].features if f.path.step == ["petal_length"])
    standard = next(h for h in feature.num_stats.histograms if h.type == statistics_pb2.Histogram.STANDARD)
    standard.buckets.add(low_value=float("inf"), high_value=float("inf"), sample_count=1)
    newest = workdir / constants.MONITORING_DIR / RUN_ID / "20260102T100000Z"
    (newest / "serving_statistics.pb").write_bytes(serving.SerializeToString())
    monitoring = report_monitoring.read(str(workdir), RUN_ID)
    drawn = monitoring.histograms["petal_length"]["serving"]
    assert np.isfinite(drawn.lows).all() and np.isfinite(drawn.highs).all() and len(drawn.counts) == 10
    assert "nan" not in report_monitoring.build_figures(monitoring)["monitor-petal_length"].lower()


def test_a_run_never_monitored_has_no_section(tmp_path):
    (tmp_path / constants.MONITORING_DIR / RUN_ID / "not-a-stamp").mkdir(parents=True)
    assert report_monitoring.read(str(tmp_path), RUN_ID) is None
    assert '<section id="monitoring">' not in _page(tmp_path)


def _break_newest(workdir: pathlib.Path, how: str) -> None:
    newest = workdir / constants.MONITORING_DIR / RUN_ID / "20260102T100000Z"
    result = json.loads((newest / report_monitoring.RESULT_FILE).read_text())
    if how == "no result.json":
        (newest / report_monitoring.RESULT_FILE).unlink()
    elif how == "bad JSON":
        (newest / report_monitoring.RESULT_FILE).write_text('{"features": [')
    elif how == "no features":
        del result["features"]
    elif how == "distance not a number":
        result["features"][1]["skew"]["distance"] = "high"
    elif how == "no serving statistics":
        (newest / "serving_statistics.pb").unlink()
    elif how == "training statistics gone":
        result["training_statistics"] = str(workdir / "gone" / "FeatureStats.pb")
    elif how == "bad anomalies":
        (newest / "anomalies.pbtxt").write_text("anomaly_info { key: ")
    if how not in ("no result.json", "bad JSON"):
        (newest / report_monitoring.RESULT_FILE).write_text(json.dumps(result))


@pytest.mark.parametrize("how, note", [
    ("no result.json", r"20260102T100000Z/result\.json: cannot be read \(No such file or directory\)"),
    ("bad JSON", r"20260102T100000Z/result\.json: not valid JSON \(Expecting value: line 1 column 15"),
    ("no features", r"result\.json: &#x27;features&#x27; is missing, expected a list"),
    ("distance not a number", r"feature &#x27;sepal_width&#x27; skew: &#x27;distance&#x27; is &#x27;high&#x27;, "
                              r"expected a number"),
    ("no serving statistics", r"serving_statistics \S+20260102T100000Z/serving_statistics\.pb: cannot be read"),
    ("training statistics gone", r"training_statistics \S+/gone/FeatureStats\.pb: cannot be read"),
    ("bad anomalies", r"anomalies \S+/anomalies\.pbtxt: cannot be read \(ParseError"),
])
def test_a_broken_result_is_a_note_not_a_crash(workdir, how, note):
    _break_newest(workdir, how)
    page = _page(workdir)
    section = page[page.index('<section id="monitoring">'):]
    assert re.search(r"This monitor result could not be read in full:</b><ul><li>[^<]*?" + note, section), section
    drawn = set(re.findall(r'<figure id="figure-([^"]+)"', section))
    if how in ("no serving statistics", "training statistics gone"):  # the other side is still drawn
        assert len(drawn) == 5 and "Skew or drift found" in section
    elif how == "bad anomalies":
        assert len(drawn) == 5 and "Anomalies (TFDV" not in section
    else:
        assert drawn == set()


# --- in a real run's report, in a real browser -----------------------------------------------------------------

def _copy_of_run(pipeline_run, tmp_path: pathlib.Path):
    """A workdir holding a copy of the session run's ML Metadata (its artifacts stay where they are), so that results
    written here never show in the session workdir; the first run's id and its train split's statistics file."""
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    shutil.copy(pipeline_run.workdir / "metadata.sqlite", workdir / "metadata.sqlite")
    run_id = re.search(r"^Run (\S+)$", pipeline_run.result.stdout, re.M).group(1)
    record = report.read_run(str(workdir), run_id)
    training = pathlib.Path(record.outputs["StatisticsGen.statistics"].uri) / "Split-train" / "FeatureStats.pb"
    assert training.is_file(), training
    return workdir, run_id, str(training)


@pytest.mark.e2e
def test_report_with_a_monitor_result_opens_offline_with_every_picture(pipeline_run, statistics, tmp_path):
    """write_report of a real run with a result against that run's own training statistics: the section and all its
    pictures drawn in Chromium, no console line; then with the newest result broken, a note and the report still."""
    workdir, run_id, training = _copy_of_run(pipeline_run, tmp_path)
    results = workdir / constants.MONITORING_DIR / run_id
    write_result(results / "20260102T100000Z", training, statistics["shifted"])
    page = pathlib.Path(report.write_report(str(workdir), run_id))
    assert not ANY_URL.search(page.read_text())
    dom, console = run_chromium(page, tmp_path, "--dump-dom")
    assert console == "", console
    drawn = figures_in(dom)
    assert {name: ok for name, ok in drawn.items() if name.startswith("monitor-")} == {
        **{report_monitoring.figure_name(name): True for name in constants.FEATURE_KEYS}, "monitor-species": True}
    assert all(drawn.values()) and "Skew or drift found: <b>yes</b>" in dom
    assert len(re.findall(r'<td class="fail">FAIL</td>', dom)) == len(WIDTHS)  # drift: not checked (no previous)
    assert dom.count('<td colspan="3">not checked</td>') == len(constants.FEATURE_KEYS) + 1
    assert "(not checked: it needs --since and traffic logged before that window)" in dom

    (results / "20260102T110000Z").mkdir()  # a newer result whose monitor died before writing anything
    page = pathlib.Path(report.write_report(str(workdir), run_id))
    dom, console = run_chromium(page, tmp_path, "--dump-dom")
    assert console == ""
    assert re.search(r"could not be read in full:</b><ul><li>\S+20260102T110000Z/result\.json: cannot be read", dom)
    assert not any(name.startswith("monitor-") for name in figures_in(dom)) and "Model blessed" in dom


@pytest.mark.e2e
def test_a_real_monitor_result_renders_in_the_runs_report(pipeline_run, pushed_model, tmp_path):
    """A real server over the session run's model logs Fisher's rows with the widths +50%; the real `iris-tfx
    monitor` judges them and rewrites that run's report, which Chromium opens offline with the section's pictures."""
    from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
    from serving import harness
    from serving.client import IrisClient
    from tensorflow_serving.config import model_server_config_pb2
    workdir, run_id, _ = _copy_of_run(pipeline_run, tmp_path)
    (workdir / "reports").mkdir()
    shutil.copy(pipeline_run.workdir / "reports" / f"{run_id}.html", workdir / "reports")  # monitor rewrites it
    version = int(pushed_model.name)
    harness.copy_version(pushed_model, tmp_path / "models", version)
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=constants.MODEL_NAME, base_path=str(tmp_path / "models"),
                                                model_platform="tensorflow")
    model.logging_config.log_collector_config.filename_prefix = str(tmp_path / "logs" / "iris")
    model.logging_config.sampling_config.sampling_rate = 1.0
    (tmp_path / "models.config").write_text(text_format.MessageToString(config))
    rows = pd.read_csv(IRIS_CSV)[list(constants.FEATURE_KEYS)]
    for name in WIDTHS:
        rows[name] *= 1.5
    server = harness.ServerProcess([f"--model_config_file={tmp_path / 'models.config'}"], tmp_path / "server.log")
    try:
        with IrisClient(server.wait_ready().grpc_target, timeout=60) as client:
            assert len(client.predict(rows.to_dict("records"))) == len(rows)
    finally:
        assert server.stop() == 0, server.log()

    result = iris_tfx("monitor", "--logs", str(tmp_path / "logs" / "iris"), "--workdir", str(workdir))
    assert result.returncode == 1, result.stdout + result.stderr  # skew found
    page = workdir / "reports" / f"{run_id}.html"
    assert f"Report: {page}" in result.stdout and not ANY_URL.search(page.read_text())
    dom, console = run_chromium(page, tmp_path, "--dump-dom")
    assert console == "", console
    drawn = figures_in(dom)
    assert {name: ok for name, ok in drawn.items() if name.startswith("monitor-")} == {
        **{report_monitoring.figure_name(name): True for name in constants.FEATURE_KEYS}, "monitor-species": True}
    assert all(drawn.values()) and "could not be read" not in dom
    section = re.search(r'<section id="monitoring">.*?</section>', dom, re.S).group(0)
    assert f"version <b>{version}</b>" in section and "Skew or drift found: <b>yes</b>" in section
    for name in constants.FEATURE_KEYS:
        row = re.search(rf"<tr><td>{name}</td>(.*?)</tr>", section).group(1)
        assert re.findall(r'<td class="(pass|fail)">', row)[0] == ("fail" if name in WIDTHS else "pass"), row
    assert re.search(r"training \(\d+\)", section) and "serving (150)" in section  # train split vs traffic
