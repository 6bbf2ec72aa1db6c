"""iris-tfx serve and predict: thin adapters over serving/, which parses TF Serving's own flags itself."""
import argparse
from typing import List

from iris_tfx import flags


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `serve` and `predict`, forwarded untouched (so `iris-tfx serve --help` shows TF Serving's flags)."""
    flags.add_forwarded(subparsers, "serve", "TF Serving-compatible model server (see iris-tfx serve --help)", _serve)
    flags.add_forwarded(subparsers, "predict", "query a model server over gRPC (see iris-tfx predict --help)",
                        _predict)


def _serve(argv: List[str]) -> int:
    """The model server (imports TensorFlow: only when serving)."""
    from serving import server  # pylint: disable=g-import-not-at-top
    return server.main(argv)


def _predict(argv: List[str]) -> int:
    """The gRPC client (kept light: the server's modules are not imported)."""
    from serving import client  # pylint: disable=g-import-not-at-top
    return client.main(argv)
