"""The browser client as an npm package: ``server/static/package.json`` (its version is the Python package's)
and ``client.d.ts``, TypeScript declarations of every export of ``client.js``, checked with ``tsc --strict
--noEmit`` in a project that installs the package as a front-end project would (``npm install <dir>``, then
``import { Listener, Collection } from "xia-broadcast-client"``): the uses in ``tests/client_types/`` type-check,
and every deliberately wrong use in ``wrong.ts`` is an error.

The TypeScript compiler is fetched from the npm registry by the test (a pinned version, kept in the pytest
cache); the type checks are skipped only without ``node``/``npm`` or when the registry cannot be reached.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

import xia_broadcast
from helpers import CLASSES
from xia_broadcast.server.config import Settings
from xia_broadcast.server.static import static_response

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "src" / "xia_broadcast" / "server" / "static"
USES = Path(__file__).parent / "client_types"
PACKAGE = "xia-broadcast-client"
#: the TypeScript checked against (the declarations also pass 6.0 and 7.0)
TYPESCRIPT = "5.9.3"
#: seconds for npm to fetch TypeScript (a registry that does not answer in time counts as unreachable)
NPM_TIMEOUT = 90
#: what npm says when the registry cannot be reached
NETWORK_ERROR = re.compile(r"\b(?:E(?:CONNREFUSED|NOTFOUND|AI_AGAIN|TIMEDOUT|CONNRESET|NETUNREACH|HOSTUNREACH|"
                           r"CONNABORTED|PROXY)|ERR_SOCKET_TIMEOUT)\b|network request to")
NPM_ENV = {"npm_config_update_notifier": "false", "npm_config_fund": "false", "npm_config_audit": "false",
           "npm_config_loglevel": "error"}


# -- the package, without Node ---------------------------------------------------------------------------------


def package_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((STATIC / "package.json").read_text())
    return data


def test_package_json_installs_client_js_with_its_types_at_the_python_package_version() -> None:
    pkg = package_json()
    assert pkg["name"] == PACKAGE
    assert pkg["version"] == xia_broadcast.__version__, "bump package.json with src/xia_broadcast/__init__.py"
    assert pkg["type"] == "module" and pkg["main"] == "./client.js" and pkg["types"] == "./client.d.ts"
    assert pkg["exports"] == {".": {"types": "./client.d.ts", "default": "./client.js"},
                              "./package.json": "./package.json"}
    assert pkg["files"] == ["client.js", "client.d.ts"]
    assert all((STATIC / name).is_file() for name in pkg["files"])
    assert "dependencies" not in pkg and "scripts" not in pkg  # nothing to fetch, nothing run at install
    assert pkg["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_the_python_package_ships_them_and_the_server_serves_only_the_module() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["xia_broadcast"]
    for name in ("client.js", "client.d.ts", "package.json"):
        assert any(fnmatch.fnmatch(f"server/static/{name}", glob) for glob in globs), f"{name} not in package-data"
    settings = Settings(classes=dict(CLASSES), demo=True)
    assert static_response("/client.js", settings) is not None
    for path in ("/client.d.ts", "/package.json", "/static/package.json"):
        assert static_response(path, settings) is None, f"{path} is served"


JS_EXPORT = re.compile(r"^export\s+(?:async\s+)?(?:const|let|var|function\*?|class)\s+([A-Za-z_$][\w$]*)", re.M)
DTS_VALUE = re.compile(r"^export\s+declare\s+(?:const|let|var|function|class|abstract\s+class|enum)\s+(\w+)", re.M)
DTS_TYPE = re.compile(r"^export\s+(?:interface|type)\s+(\w+)", re.M)


def js_exports() -> set[str]:
    js = (STATIC / "client.js").read_text()
    # every export is a declaration (no export lists, re-exports or default), so the names are these
    assert not re.search(r"^export\s*(?:\{|\*|default\b)", js, re.M)
    return set(JS_EXPORT.findall(js))


def test_client_d_ts_declares_exactly_the_exports_of_client_js() -> None:
    dts = (STATIC / "client.d.ts").read_text()
    exported = [line for line in dts.splitlines() if line.startswith("export ")]
    assert len(exported) == len(DTS_VALUE.findall(dts)) + len(DTS_TYPE.findall(dts)), "an export of another form"
    assert set(DTS_VALUE.findall(dts)) == js_exports() == {
        "TERMINAL_CLOSE_CODES", "Backoff", "webSocketUrl", "Listener", "Collection"}
    assert not set(DTS_TYPE.findall(dts)) & js_exports()


def test_the_typed_uses_import_every_export() -> None:
    """usage.ts is the proof that every export is declared usably: it must import each of them."""
    usage = (USES / "usage.ts").read_text()
    names = re.search(r'import\s*\{([^}]*)\}\s*from\s*"xia-broadcast-client"', usage)
    assert names is not None
    values = {n.strip() for n in names.group(1).split(",") if n.strip() and not n.strip().startswith("type ")}
    assert values == js_exports()


# -- tsc -------------------------------------------------------------------------------------------------------


def run(command: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **NPM_ENV})


@pytest.fixture(scope="session")
def node_npm() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to install the package and type-check client.d.ts")
    return node, npm


@pytest.fixture(scope="session")
def tsc(node_npm: tuple[str, str], request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command of TypeScript's ``tsc`` (``TYPESCRIPT``), installed from the npm registry once, cached."""
    node, npm = node_npm
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    base = cache.mkdir("typescript") if cache is not None else tmp_path_factory.mktemp("typescript")
    home = base / TYPESCRIPT
    compiler = home / "node_modules" / "typescript" / "bin" / "tsc"
    if not compiler.is_file():
        shutil.rmtree(home, ignore_errors=True)
        partial = base / f"{TYPESCRIPT}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        command = [npm, "install", "--prefix", str(partial), f"typescript@{TYPESCRIPT}", "--no-save",
                   "--ignore-scripts", "--prefer-offline", "--fetch-timeout=30000", "--fetch-retries=1",
                   "--fetch-retry-mintimeout=2000", "--fetch-retry-maxtimeout=5000"]
        try:
            done = run(command, partial, NPM_TIMEOUT)
        except subprocess.TimeoutExpired:
            shutil.rmtree(partial, ignore_errors=True)
            pytest.skip(f"the npm registry did not deliver typescript@{TYPESCRIPT} within {NPM_TIMEOUT} s")
        if done.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            if NETWORK_ERROR.search(done.stderr):
                pytest.skip(f"the npm registry is unreachable, typescript@{TYPESCRIPT} not fetched: "
                            f"{done.stderr.strip().splitlines()[0]}")
            pytest.fail(f"npm could not install typescript@{TYPESCRIPT}:\n{done.stdout}\n{done.stderr}")
        partial.rename(home)
    version = json.loads((compiler.parents[1] / "package.json").read_text())["version"]
    assert version == TYPESCRIPT
    return [node, str(compiler)]


@pytest.fixture(scope="module")
def project(node_npm: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A front-end project that installed the package from its directory, with the uses to type-check."""
    npm = node_npm[1]
    root = tmp_path_factory.mktemp("frontend")
    (root / "package.json").write_text(json.dumps({"name": "frontend", "private": True, "type": "module"}))
    # --install-links: a copy made as `npm pack` would (what `files` lists), not a link to the source tree
    done = run([npm, "install", "--offline", "--install-links", "--ignore-scripts", str(STATIC)], root, 60)
    assert done.returncode == 0, f"npm install {STATIC} failed:\n{done.stdout}\n{done.stderr}"
    installed = root / "node_modules" / PACKAGE
    assert not installed.is_symlink()
    assert sorted(p.name for p in installed.iterdir()) == ["client.d.ts", "client.js", "package.json"]
    assert (installed / "client.js").read_bytes() == (STATIC / "client.js").read_bytes()
    for use in USES.glob("*.ts"):
        shutil.copy(use, root / use.name)
    return root


def test_node_imports_the_installed_package_by_name(node_npm: tuple[str, str], project: Path) -> None:
    """The `exports` of package.json at run time: the module a bundler or Node loads by the package's name."""
    node = node_npm[0]
    script = f'import("{PACKAGE}").then((m) => console.log(JSON.stringify(Object.keys(m))))'
    done = run([node, "-e", script], project, 30)
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) == js_exports()


STRICTEST = {"exactOptionalPropertyTypes": True, "noUncheckedIndexedAccess": True}


def type_check(tsc: list[str], project: Path, name: str, file: str, **options: object) -> list[str]:
    """``tsc --strict --noEmit`` on one file of the project; the errors it reports."""
    config = {"compilerOptions": {"strict": True, "noEmit": True, "target": "es2022", "types": [], **options},
              "files": [file]}
    (project / f"tsconfig.{name}.json").write_text(json.dumps(config))
    done = run([*tsc, "-p", f"tsconfig.{name}.json", "--strict", "--noEmit", "--pretty", "false"], project, 60)
    errors = [line for line in done.stdout.splitlines() if re.match(r"\S+\(\d+,\d+\): error TS\d+", line)]
    assert (done.returncode != 0) == bool(errors), done.stdout + done.stderr
    return errors


@pytest.mark.parametrize(("name", "file", "options"), [
    # a bundled front end (Vite, webpack, esbuild): the `exports` condition "types"
    ("bundler", "usage.ts", {"module": "esnext", "moduleResolution": "bundler", "lib": ["es2022", "dom"]}),
    # Node's own ESM resolution, with the strictest options a project may add
    ("nodenext", "usage.ts", {"module": "nodenext", "moduleResolution": "nodenext", "lib": ["es2022", "dom"],
                              **STRICTEST}),
    # no DOM types at all: the declarations stand alone; a WebSocket class of one's own
    ("no-dom", "bare.ts", {"module": "nodenext", "moduleResolution": "nodenext", "lib": ["es2022"], **STRICTEST}),
])
def test_the_uses_type_check(tsc: list[str], project: Path, name: str, file: str,
                             options: dict[str, object]) -> None:
    assert type_check(tsc, project, name, file, **options) == []


def test_every_wrong_use_is_a_type_error(tsc: list[str], project: Path) -> None:
    """Each line of wrong.ts marked ``// error TSnnnn`` is reported with that code, and nothing else is."""
    marked = set()
    for number, line in enumerate((USES / "wrong.ts").read_text().splitlines(), 1):
        if found := re.search(r"// error (TS\d+)$", line):
            marked.add((number, found.group(1)))
    assert len(marked) >= 20
    errors = type_check(tsc, project, "wrong", "wrong.ts", module="esnext", moduleResolution="bundler",
                        lib=["es2022", "dom"])
    reported = set()
    for error in errors:
        found = re.match(r"wrong\.ts\((\d+),\d+\): error (TS\d+)", error)
        assert found is not None, error
        reported.add((int(found.group(1)), found.group(2)))
    assert reported == marked, "\n".join(errors)
