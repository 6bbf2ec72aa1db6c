"""iris-tfx models: the pushed versions with the run that made each and what a server serves; `models pin` and
`models label` write the ModelServerConfig text file that our server and TF Serving both poll
(--model_config_file with --model_config_file_poll_wait_seconds), so a rollback or a label needs no restart."""
import argparse
import os
import re
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from components.constants import DEFAULT_WORKDIR, MODEL_NAME, default_serving_dir
from iris_tfx import console
from iris_tfx.flags import integer_at_least
from serving.policy import SAVED_MODEL_FILES, aspired

EXIT_FAILED = 1  # the server could not be asked
EXIT_USAGE = 2   # a version not on disk, a label that cannot be set, an unreadable config file
CONFIG_NAME = "models.config"  # in the workdir, unless --config names another file
STATUS_TIMEOUT_SECONDS = 5.0


class ModelsError(ValueError):
    """A request the config file or the serving directory cannot satisfy; the message is one line."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `models` (the listing), `models pin VERSION...` and `models label NAME VERSION`."""
    models = subparsers.add_parser("models", help="pushed model versions, the runs that made them and what a server "
                                                  "serves; pin versions or label them (rollback, stable/canary)")
    _add_common(models, suppress=False)
    models.add_argument("--server", metavar="HOST:PORT",
                        help="also ask this model server (gRPC) which versions it serves (default: do not ask)")
    models.set_defaults(handler=_list)
    commands = models.add_subparsers(dest="models_command", metavar="COMMAND")
    pin = commands.add_parser("pin", help="serve exactly these versions: writes model_version_policy { specific } "
                                          "in the config file (a rollback is pinning an older version)")
    pin.add_argument("versions", metavar="VERSION", nargs="+", type=integer_at_least(0),
                     help="version(s) in the serving dir; unlabelled requests get the newest of them")
    _add_common(pin, suppress=True)
    pin.set_defaults(handler=_pin)
    label = commands.add_parser("label", help="point a version label (e.g. stable, canary) at a served version: "
                                              "writes version_labels in the config file")
    label.add_argument("name", metavar="NAME", help="the label, e.g. stable or canary")
    label.add_argument("version", metavar="VERSION", type=integer_at_least(0), help="a version the server serves")
    _add_common(label, suppress=True)
    label.set_defaults(handler=_label)


def _add_common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options accepted before or after the sub-command (SUPPRESS on the sub-command keeps a value given before)."""
    def default(value):
        return argparse.SUPPRESS if suppress else value
    parser.add_argument("--workdir", default=default(DEFAULT_WORKDIR),
                        help=f"the pipeline's workdir: its run history, and the default place of the serving dir "
                             f"and the config file (default: {DEFAULT_WORKDIR})")
    parser.add_argument("--serving-dir", default=default(None),
                        help="the model's base path, holding one directory per version (default: <workdir>/models/"
                             f"{MODEL_NAME}; for pin/label, the config file's base_path when the file exists)")
    parser.add_argument("--config", default=default(None), metavar="FILE",
                        help=f"the ModelServerConfig text file the server polls (default: <workdir>/{CONFIG_NAME})")
    parser.add_argument("--model-name", default=default(MODEL_NAME),
                        help=f"the model's name in the config file (default: {MODEL_NAME})")


# --- listing ---------------------------------------------------------------------------------------------------

def _list(args: argparse.Namespace) -> int:
    """Prints each version on disk with its run, metrics, config pins/labels and (with --server) its state."""
    serving_dir = args.serving_dir or default_serving_dir(args.workdir, args.model_name)
    if not os.path.isdir(serving_dir):
        console.error(f"--serving-dir {serving_dir}: no such directory (nothing pushed there yet?)")
        return EXIT_USAGE
    versions = versions_on_disk(serving_dir)
    runs, note = _runs_by_version(args.workdir)
    labels, pinned = _config_view(_config_path(args), args.model_name)
    states, server_error = _server_states(args.server, args.model_name) if args.server else ({}, None)
    header = ("version", "run id", "started", "accuracy", "blessed", "config", "server")
    rows = [header]
    for version in sorted(versions, reverse=True):
        record = runs.get(str(version))
        marks = (["pinned"] if version in pinned else []) + [f"label {name}" for name, v in labels if v == version]
        rows.append((str(version), record.run_id if record else "-", record.started if record else "-",
                     "-" if record is None or record.accuracy is None else f"{record.accuracy:.4f}",
                     ("yes" if record.summary.blessed else "no") if record else "-",
                     ", ".join(marks) or "-", states.get(version, "-")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print(f"Versions in {serving_dir} (newest first):")
    print("\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows))
    if note:
        print(note)
    if server_error:
        console.error(server_error)
        return EXIT_FAILED
    return 0


def _runs_by_version(workdir: str):
    """Each pushed version's run from the workdir's history, and a note when there is no history."""
    from pipeline import history  # pylint: disable=g-import-not-at-top  (imports TFX)
    try:
        return history.pushed_by(history.runs(workdir)), None
    except history.HistoryError as err:
        return {}, f"(no run history: {err})"


def _config_view(path: str, model_name: str) -> Tuple[List[Tuple[str, int]], List[int]]:
    """The labels and pinned versions the config file gives the model (none if there is no such file)."""
    if not os.path.isfile(path):
        return [], []
    try:
        _, model = _read_config(path, model_name, base_path=None)
    except ModelsError:
        return [], []
    policy = model.model_version_policy
    pinned = list(policy.specific.versions) if policy.WhichOneof("policy_choice") == "specific" else []
    return sorted(model.version_labels.items()), pinned


def _server_states(target: str, model_name: str) -> Tuple[Dict[int, str], Optional[str]]:
    """Each version's state on a running server (GetModelStatus, short timeout), or the reason it is unknown."""
    from serving.client import IrisClient, ServingClientError  # pylint: disable=g-import-not-at-top
    try:
        with IrisClient(target, model_name=model_name, timeout=STATUS_TIMEOUT_SECONDS) as client:
            response = client.status()
    except ServingClientError as err:
        return {}, f"--server {target}: {err}"
    state_names = response.DESCRIPTOR.fields_by_name["model_version_status"].message_type.fields_by_name[
        "state"].enum_type.values_by_number
    return {s.version: state_names[s.state].name for s in response.model_version_status}, None


# --- pin and label ---------------------------------------------------------------------------------------------

def _pin(args: argparse.Namespace) -> int:
    """Writes model_version_policy { specific { versions } }; drops labels of versions no longer served."""
    path = _config_path(args)
    try:
        config, model = _read_config(path, args.model_name, _base_path(args))
        _check_on_disk(args.versions, model.base_path, path)
    except ModelsError as err:
        console.error(str(err))
        return EXIT_USAGE
    versions = sorted(set(args.versions))
    model.model_version_policy.specific.Clear()
    model.model_version_policy.specific.versions.extend(versions)
    dropped = sorted((name, v) for name, v in model.version_labels.items() if v not in versions)
    for name, _ in dropped:  # a label on an unloaded version would make the server refuse the whole file
        del model.version_labels[name]
    write_config(path, config)
    print(f"{path}: model {model.name} pinned to version{'s' if len(versions) > 1 else ''} "
          f"{', '.join(map(str, versions))} (base path {model.base_path}). A server polling this file loads "
          "what it does not serve yet before it unloads the rest.")
    for name, version in dropped:
        print(f"  label {name} removed: it named version {version}, which is no longer served")
    return 0


def _label(args: argparse.Namespace) -> int:
    """Writes version_labels { key: NAME value: VERSION } for a version the file's policy already serves."""
    path = _config_path(args)
    try:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name):
            raise ModelsError(f"label {args.name!r}: use letters, digits, '_', '-' and '.' only")
        config, model = _read_config(path, args.model_name, _base_path(args))
        on_disk = _check_on_disk([args.version], model.base_path, path)
        served = aspired(model, on_disk)
        if args.version not in served:
            # TF Serving labels only loaded versions; load first (one file write), label once it is available.
            raise ModelsError(
                f"version {args.version} is not served under {path}'s version policy (it serves "
                f"{', '.join(map(str, served)) or 'nothing'}): a label can only name a loaded version; first "
                f"`iris-tfx models pin {' '.join(map(str, sorted(set(served) | {args.version})))} --config {path}`,"
                " let the server load it, then label it")
    except ModelsError as err:
        console.error(str(err))
        return EXIT_USAGE
    model.version_labels[args.name] = args.version
    write_config(path, config)
    print(f"{path}: label {args.name} -> version {args.version} of model {model.name}; requests with "
          f'version_label "{args.name}" reach it once the server has re-read the file.')
    return 0


def _config_path(args: argparse.Namespace) -> str:
    return args.config or os.path.join(args.workdir, CONFIG_NAME)


def _base_path(args: argparse.Namespace) -> str:
    """The base path a new config file gets: the serving dir, absolute (the server may run elsewhere)."""
    return os.path.abspath(args.serving_dir or default_serving_dir(args.workdir, args.model_name))


def _read_config(path: str, model_name: str, base_path: Optional[str]):
    """The config file and its entry for model_name; a new one-model config (at base_path) if there is no file."""
    config = model_server_config_pb2.ModelServerConfig()
    if not os.path.exists(path):
        if base_path is None:
            raise ModelsError(f"{path}: no such file")
        model = config.model_config_list.config.add(name=model_name, base_path=base_path, model_platform="tensorflow")
        return config, model
    try:
        with open(path, encoding="utf-8") as f:
            text_format.Parse(f.read(), config)
    except (OSError, UnicodeDecodeError, text_format.ParseError) as err:
        raise ModelsError(f"{path}: not a readable ModelServerConfig text file ({err})") from None
    if config.WhichOneof("config") != "model_config_list":
        raise ModelsError(f"{path}: has no model_config_list")
    for model in config.model_config_list.config:
        if model.name == model_name:
            return config, model
    names = ", ".join(m.name for m in config.model_config_list.config) or "none"
    raise ModelsError(f"{path}: no model named {model_name!r} (models: {names}; see --model-name)")


def versions_on_disk(base_path: str) -> List[int]:
    """Complete version directories (integer name, saved_model.pb written) under a local base path. Plain os calls,
    not serving.source (tf.io.gfile): pin and label must not import TensorFlow."""
    try:
        names = os.listdir(base_path)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and any(
        os.path.isfile(os.path.join(base_path, n, f)) for f in SAVED_MODEL_FILES))


def _check_on_disk(versions: Sequence[int], base_path: str, config_path: str) -> List[int]:
    """The versions on disk; ModelsError naming the first requested version that is not there."""
    on_disk = versions_on_disk(base_path)
    for version in versions:
        if version not in on_disk:
            raise ModelsError(f"version {version} is not in {base_path} (versions there: "
                              f"{', '.join(map(str, on_disk)) or 'none'}); {config_path} is unchanged")
    return on_disk


def write_config(path: str, config) -> None:
    """Writes the text proto atomically (a temp file in the same directory, then rename): a server polling the file
    never reads half of it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    descriptor, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}-", dir=directory)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as f:
            f.write(text_format.MessageToString(config))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
