"""`python -m serving [flags]`: the model server alone (what `iris-tfx serve` runs), used by serving.harness."""
import sys

from components import runtime


def _main() -> int:
    """TensorFlow's runtime prepared before the server's modules import TensorFlow, then the server."""
    runtime.prepare()
    from serving import server  # pylint: disable=g-import-not-at-top
    return server.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(_main())
