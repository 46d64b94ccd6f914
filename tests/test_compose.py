"""docker-compose.yml and the Dockerfiles stay consistent with the CLI (no Docker needed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO_ROOT

yaml = pytest.importorskip("yaml")

COMPOSE = REPO_ROOT / "docker-compose.yml"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _argv(command: str | list[str]) -> list[str]:
    return command.split() if isinstance(command, str) else [str(c) for c in command]


@pytest.fixture(scope="module")
def serve_help() -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0 and ("No module named" in proc.stderr or "ImportError" in proc.stderr):
        pytest.skip(f"app.cli not importable yet: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _options(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def test_services() -> None:
    services = _compose()["services"]
    assert set(services) >= {"sipdlg", "uas", "uac"}
    assert services["sipdlg"]["build"] == "."
    for name in ("uas", "uac"):
        build = services[name]["build"]
        dockerfile = REPO_ROOT / build["context"] / build["dockerfile"]
        assert dockerfile.is_file(), dockerfile
        assert "sip-tester" in dockerfile.read_text()
    assert (REPO_ROOT / "Dockerfile").is_file()


def test_sipdlg_command(serve_help: str) -> None:
    argv = _argv(_compose()["services"]["sipdlg"]["command"])
    assert argv[:2] == ["sipdlg", "serve"]
    assert argv[2:] == ["--next-hop", "uas:5080", "--mi-listen", "127.0.0.1:8888"]
    for opt in _options(argv):
        assert re.search(rf"(^|[\s\[,]){re.escape(opt)}\b", serve_help), (
            f"{opt} not in `sipdlg serve --help`"
        )


def test_dockerfile_cmd_options(serve_help: str) -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    m = re.search(r"^CMD\s+(\[.*?\])\s*$", text, re.M | re.S)
    assert m, "Dockerfile needs an exec-form CMD"
    import json

    argv = json.loads(m.group(1).replace("\\\n", " "))
    assert argv[:2] == ["sipdlg", "serve"]
    for opt in _options(argv):
        assert opt in serve_help, f"{opt} not in `sipdlg serve --help`"
    # `pip install .` needs what pyproject.toml packages, and its readme
    copied = " ".join(re.findall(r"^COPY\s+(.+?)\s+\S+$", text, re.M))
    for path in ("pyproject.toml", "README.md", "app", "engine", "schemas"):
        assert path in copied.split(), f"Dockerfile does not COPY {path}"
        assert (REPO_ROOT / path).exists()


def test_dockerfile_runs_the_compiled_engine_with_a_healthcheck() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert "python scripts/compile.py" in text
    assert "COPY --from=build /src/build/native/engine /opt/sipdlg-native/engine" in text
    assert "PYTHONPATH=/opt/sipdlg-native" in text
    assert re.search(r'^HEALTHCHECK .*CMD \["sipdlg", "health"\]$', text, re.M)
    assert re.search(r'^ENTRYPOINT \["sipdlg-entrypoint"\]$', text, re.M)


@pytest.mark.parametrize("source", ["Dockerfile", "docker-compose.yml"])
def test_container_command_is_accepted_as_is(source: str) -> None:
    """The image's command, run through its entrypoint (which advertises the container's IP
    for the wildcard sockets), is a configuration sipdlg starts with."""
    if source == "Dockerfile":
        m = re.search(r"^CMD\s+(\[.*?\])\s*$", (REPO_ROOT / source).read_text(), re.M)
        assert m
        import json

        argv = json.loads(m.group(1))
    else:
        argv = _argv(_compose()["services"]["sipdlg"]["command"])
    # `sipdlg serve ARGS` up to the point where it would bind: the settings it would run.
    check = """if True:
        import sys
        from app import cli
        from app.config import load_settings

        def settings_only(args):
            skip = ("command", "config", "no_uvloop")
            options = {k: v for k, v in vars(args).items() if k not in skip}
            print(load_settings(options, None).listen)
            return 0

        cli.serve = settings_only
        sys.exit(cli.main(sys.argv[1:]))
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPDLG_")}
    proc = subprocess.run(
        ["sh", "docker/entrypoint.sh", sys.executable, "-c", check, *argv[1:]],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert " as " in proc.stdout and "0.0.0.0:5060" in proc.stdout


def test_environment_names_are_settings(serve_help: str) -> None:
    """SIPDLG_* variables given to the container are real settings."""
    env = _compose()["services"]["sipdlg"].get("environment", {})
    names = env if isinstance(env, dict) else dict(e.split("=", 1) for e in env)
    for name in names:
        assert name.startswith("SIPDLG_")
        opt = "--" + name.removeprefix("SIPDLG_").lower().replace("_", "-")
        assert opt in serve_help, f"{name}: no {opt} setting"


def test_sipp_services_place_calls_at_the_proxy() -> None:
    services = _compose()["services"]
    uas = " ".join(_argv(services["uas"]["command"]))
    uac = " ".join(_argv(services["uac"]["command"]))
    assert "-sn uas" in uas and "-p 5080" in uas
    assert uac.startswith("exec sipp sipdlg:5060 ") and "-sn uac" in uac
    for cmd in (uas, uac):
        assert "-nostdin" in cmd
        assert "-bg" not in cmd.split()
    assert "sipdlg" in services["uac"]["depends_on"]


def test_compose_file_is_plain_yaml() -> None:
    # No tabs, parses to a mapping with the expected top-level keys.
    text = COMPOSE.read_text()
    assert "\t" not in text
    assert set(_compose()) <= {"services", "volumes", "networks", "name"}


def test_scripts_exist_and_are_executable() -> None:
    for rel in ("scripts/test.sh", "scripts/serve.sh", ".ci/run"):
        path = Path(REPO_ROOT, rel)
        assert path.is_file(), rel
        assert path.stat().st_mode & 0o111, f"{rel} is not executable"
    proc = subprocess.run(["bash", "-n", "scripts/test.sh"], cwd=REPO_ROOT, timeout=30)
    assert proc.returncode == 0
