"""components.schema_bounds as the monitor uses it: out-of-domain counts over columns of traffic, by the server's
rules (SERVING environment, named float domains, float32 compare, disallow_nan/inf), without TensorFlow."""
import pathlib
import subprocess
import sys

import numpy as np
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from components import constants as c
from components.schema_bounds import Bounds

REPO = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = text_format.Parse("""
    default_environment: "TRAINING" default_environment: "SERVING"
    feature { name: "a" type: FLOAT float_domain { min: 0.05 max: 6 } }
    feature { name: "b" type: FLOAT domain: "shared" }
    feature { name: "c" type: FLOAT float_domain { max: 2 } not_in_environment: "SERVING" }
    feature { name: "d" type: FLOAT float_domain { min: 0 } }
    feature { name: "e" type: BYTES }
    float_domain { name: "shared" min: -1 max: 1 disallow_nan: true disallow_inf: true }
    """, schema_pb2.Schema())


def test_counts_follow_the_servers_rules():
    bounds = Bounds.from_schema(SCHEMA)
    columns = {
        "a": np.array([0.05, 0.049999999, 0.0499, 6.0, 6.5, np.nan]),  # float32: 0.05 and 0.049999999 are in
        "b": np.array([[0.5, np.nan], [np.inf, 2.0], [-1.0, 1.0]]),  # named domain, lists of values: 3 out
        "c": np.array([100.0]),  # not in SERVING: not counted
        "d": np.array([-np.inf, np.inf, np.nan, 1.0]),  # no disallow_*: only -inf is out (below the minimum 0)
        "e": np.array([b"x"], dtype=object),  # no float domain
        "species": np.array(["setosa"], dtype=object)}
    assert bounds.count_out_of_domain(columns) == {"a": 2, "b": 3, "d": 1}
    # the same values the server names one by one
    named = bounds.check_columns({k: v for k, v in columns.items() if k in ("a", "d")})
    assert [(v.feature, v.kind) for v in named] == [("d", "below"), ("a", "below"), ("a", "above")]
    assert bounds.count_out_of_domain({"a": np.zeros([0])}) == {"a": 0}


def test_the_projects_schema_counts_without_importing_tensorflow():
    code = ("import sys; from components.schema_bounds import Bounds; "
            f"b = Bounds.from_file({c.DEFAULT_SCHEMA!r}); "
            "print(b.count_out_of_domain({'sepal_length': [5.1, 500.0, float('nan')]})); "
            "print(sorted(m for m in ('tensorflow', 'tensorflow_data_validation') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(REPO)).stdout.split("\n")
    assert out[:2] == ["{'sepal_length': 2}", "[]"]
