"""The pipeline image (Dockerfile, .dockerignore): built on the locked TFX, Keras 2, a numeric non-root user, the
sources only in its context."""
import ast
import importlib.metadata
import re

from k8s_helpers import REPO, dockerfile_instructions, dockerfile_user


def test_dockerfile_builds_on_tfx_with_the_locked_project():
    instructions = dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    tfx_version = importlib.metadata.version("tfx")
    assert froms == [f"tensorflow/tfx:{tfx_version}"]
    envs = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    assert re.search(r"(^|\s)TF_USE_LEGACY_KERAS=1(\s|$)", envs), envs
    copies = [rest.split() for keyword, rest in instructions if keyword in ("COPY", "ADD")]
    assert any(parts[0] == "." for parts in copies), "the repository is copied into the image"
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert re.search(r"pip install (-c|-r|--constraint|--requirement)[ =]requirements\.lock \.", runs), runs
    lock = (REPO / "requirements.lock").read_text().splitlines()
    assert f"tfx=={tfx_version}" in lock, "the lock pins the TFX of the base image"
    # The image checks at build time that the component code imports by module path.
    for module, function in (("components.transform", "preprocessing_fn"), ("components.trainer", "run_fn")):
        assert module in runs and function in runs
        tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
        assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, (module, function)


def test_image_runs_as_a_high_numeric_non_root_user():
    instructions = dockerfile_instructions()
    uid, gid = dockerfile_user()
    assert uid >= 10000 and gid >= 10000, "above the host's system and user ids (checkov CKV_K8S_40)"
    # The user switch comes after every RUN (installs need root) and is the last word on the user.
    last_run = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "RUN")
    assert [k for k, _ in instructions[last_run:]].count("USER") == 1 and instructions[-1][0] == "USER"
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert re.search(rf"useradd [^&]*--uid {uid} --gid {gid}", runs), "the user exists in /etc/passwd"


def test_dockerignore_keeps_the_context_to_the_sources():
    patterns = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".venv", ".venv-scan", ".git", "iris-tfx-work"} <= patterns
    assert any("__pycache__" in p for p in patterns)
    for needed in ("components", "pipeline", "serving", "requirements.lock", "Dockerfile"):
        assert needed not in patterns
