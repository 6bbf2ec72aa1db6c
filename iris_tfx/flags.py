"""Command-line pieces the command groups share: argparse value types and forwarded commands."""
import argparse
import math
from typing import Callable, List, Optional

from pipeline.config import default_beam_args


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum, else argparse's own error (exit 2) naming the valid range."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum} (got {text})")
        return value
    return parse


def fraction(text: str) -> float:
    """An argparse type: a finite number in [0, 1] (an accuracy), else argparse's own error (exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1] (got {text})")
    return value


def beam_args(given: Optional[List[str]]) -> List[str]:
    """The user's --beam-arg list, or DirectRunner in multi-processing mode on the local cores."""
    return given if given is not None else default_beam_args()


def add_forwarded(subparsers: argparse._SubParsersAction, name: str, help_text: str,
                  target: Callable[[List[str]], int]) -> None:
    """A command whose flags another parser owns (e.g. TF Serving's for serve): target gets the rest of the
    command line untouched, --help and -- included, so its own parser shows its own help."""
    parser = subparsers.add_parser(name, help=help_text, add_help=False, prefix_chars="\0")  # no option is ours
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    parser.set_defaults(handler=lambda args: target(args.argv))
