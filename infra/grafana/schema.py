"""The dashboards against Grafana's own published schema: the npm package ``@grafana/schema`` of the
Grafana release that runs them, type-checked with the TypeScript compiler.

``@grafana/schema`` holds the TypeScript types Grafana generates from its CUE kinds: the classic
dashboard model (``raw/dashboard/x``) and, for each of Grafana's own panel plugins, the plugin's
``Options`` and ``FieldConfig`` (``raw/composable/<panel>/panelcfg/x``). :func:`schema_errors`
writes each dashboard as a TypeScript module in which

* the dashboard's JSON ``satisfies`` the dashboard model: a property the model does not have, a
  missing required one, or a value of the wrong type is an error (object literals are checked for
  excess properties at every depth);
* each panel's ``options`` and ``fieldConfig.defaults.custom`` ``satisfy`` its plugin's
  ``Options`` and ``FieldConfig``, every property optional (Grafana fills in the plugin's
  defaults), so a misspelt option or a value outside an enum is an error; a plugin without a
  ``FieldConfig`` (stat, bar gauge) takes no custom field config at all;

and runs ``tsc --noEmit --strict`` over them. The type helpers are ``schema-check/json.ts``. Each
error is reported by the JSON path of the member it is about; the compiler names one kind of
problem per object (its unknown members, or else its wrong values), so fixing one may show the
next. Panel targets are plugin queries the package does not type (:mod:`.checks` covers them).

The two packages are pinned in ``infra/grafana/schema-check/package-lock.json`` (``@grafana/schema``
at the version of the ``grafana/grafana`` image of infra/docker-compose.yml and
infra/k8s/grafana.yaml, which tests/unit/test_grafana.py compares). :func:`install` (``ezstream
fetch``, run by ``make test``) installs them with ``npm ci`` into ``$EZ_CACHE_DIR/grafana-schema/``,
in a folder named by the lock file's hash, so a second run takes no time and nothing lands in the
clone; :func:`installed` finds them without installing.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from connectors.errors import ServiceError
from infra.grafana import HERE
from infra.grafana.checks import panels as board_panels

#: The package.json, package-lock.json and type helpers (json.ts) of the check.
PACKAGE_DIR = HERE / "schema-check"
SCHEMA_PACKAGE = "@grafana/schema"
#: The classic dashboard model, as the package exports it.
DASHBOARD_MODULE = f"{SCHEMA_PACKAGE}/dist/esm/raw/dashboard/x/Dashboard_types.gen"
#: What the package exports for a panel plugin's types: ``<plugin>`` is the panel's ``type``.
_PANEL_EXPORT = re.compile(r"\./(dist/esm/raw/composable/(?P<plugin>\w+)/panelcfg/x/\w+_types\.gen)")
#: A diagnostic of ``tsc --pretty false``: ``file(line,column): error TSnnnn: message``.
_DIAGNOSTIC = re.compile(r"(?P<file>[^()\s][^()]*)\((?P<line>\d+),(?P<column>\d+)\): (?P<message>error TS\d+: .*)")
_MARKER = ".installed"
_NPM_TIMEOUT_S = 600
_TSC_TIMEOUT_S = 300
#: Longest part of a diagnostic kept (TypeScript prints whole types).
_MESSAGE_CHARS = 240


def pinned_versions() -> dict[str, str]:
    """Package -> the exact version package.json pins (``@grafana/schema``, ``typescript``)."""
    return json.loads((PACKAGE_DIR / "package.json").read_text())["dependencies"]


def package_folder(cache_dir: Path) -> Path:
    """Where :func:`install` puts the packages of the current lock file."""
    digest = hashlib.sha256((PACKAGE_DIR / "package-lock.json").read_bytes()).hexdigest()[:12]
    return cache_dir / "grafana-schema" / f"{pinned_versions()[SCHEMA_PACKAGE]}-{digest}"


def installed(cache_dir: Path) -> Path | None:
    """The folder holding the installed packages, or None before :func:`install` ran."""
    folder = package_folder(cache_dir)
    return folder if (folder / _MARKER).exists() else None


def install(cache_dir: Path) -> Path:
    """Install the pinned packages with ``npm ci`` (npm's own cache in ``$EZ_CACHE_DIR/npm``) unless
    they are; the folder holding their ``node_modules``.

    :raises ServiceError: npm is missing, or ``npm ci`` failed (the message ends with its output).
    """
    folder = installed(cache_dir)
    if folder is not None:
        return folder
    folder = package_folder(cache_dir)
    npm = shutil.which("npm")
    if npm is None:
        raise ServiceError("the Grafana schema check: `npm` is not on PATH; install Node.js 20 or newer with npm")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(PACKAGE_DIR / name, folder / name)
    done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--cache", str(cache_dir / "npm")],
                          cwd=folder, capture_output=True, text=True, timeout=_NPM_TIMEOUT_S)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise ServiceError(f"the Grafana schema check: npm ci failed in {folder} (exit {done.returncode}):\n{tail}")
    (folder / _MARKER).write_text(json.dumps(pinned_versions()))
    return folder


def schema_errors(boards: dict[str, dict], folder: Path) -> list[str]:
    """Where each of ``boards`` (uid -> dashboard JSON) does not satisfy Grafana's schema, with the
    compiler's words: ``uid.path (panel 'title'): error TSnnnn: ...``; empty when every one does.

    ``folder`` holds the installed packages (:func:`installed`).

    :raises RuntimeError: node is missing, or the compiler failed without saying where.
    """
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("the Grafana schema check: `node` is not on PATH; install Node.js 20 or newer")
    plugins = _panel_plugins(folder / "node_modules" / SCHEMA_PACKAGE)
    with tempfile.TemporaryDirectory(prefix="ezstream-grafana-schema-") as tmp:
        work = Path(tmp)
        # The modules resolve @grafana/schema through node_modules next to them.
        (work / "node_modules").symlink_to(folder / "node_modules", target_is_directory=True)
        shutil.copyfile(PACKAGE_DIR / "json.ts", work / "json.ts")
        places: dict[str, tuple[str, list[str | None], dict[str, str]]] = {}
        for uid, board in boards.items():
            lines, paths, titles = _module(board, plugins)
            (work / f"{uid}.ts").write_text("\n".join(lines) + "\n")
            places[f"{uid}.ts"] = (uid, paths, titles)
        (work / "tsconfig.json").write_text(json.dumps({
            "compilerOptions": {"module": "esnext", "moduleResolution": "bundler", "target": "es2022", "types": []},
            "files": ["json.ts", *places],
        }))
        tsc = folder / "node_modules" / "typescript" / "bin" / "tsc"
        done = subprocess.run([node, str(tsc), "-p", "tsconfig.json", "--noEmit", "--strict", "--pretty", "false"],
                              cwd=work, capture_output=True, text=True, timeout=_TSC_TIMEOUT_S)
    errors = list(_diagnostics(done.stdout, places))
    if done.returncode != 0 and not errors:
        raise RuntimeError(f"the Grafana schema check: tsc failed (exit {done.returncode}): "
                           f"{(done.stdout + done.stderr).strip()[-2000:]}")
    return errors


def _panel_plugins(package: Path) -> dict[str, tuple[str, set[str]]]:
    """Panel type -> (module, which of ``Options`` and ``FieldConfig`` it exports), for every panel
    plugin whose types the package holds."""
    exports = json.loads((package / "package.json").read_text())["exports"]
    if "./" + DASHBOARD_MODULE.removeprefix(SCHEMA_PACKAGE + "/") not in exports:
        raise RuntimeError(f"{SCHEMA_PACKAGE} no longer exports {DASHBOARD_MODULE}")
    plugins = {}
    for key, target in exports.items():
        match = _PANEL_EXPORT.fullmatch(key)
        if match:
            declared = set(re.findall(r"export interface (Options|FieldConfig)\b", (package / target["types"]).read_text()))
            plugins[match["plugin"]] = (f"{SCHEMA_PACKAGE}/{match[1]}", declared)
    return plugins


def _module(board: dict, plugins: dict[str, tuple[str, set[str]]]) -> tuple[list[str], list[str | None], dict[str, str]]:
    """The TypeScript module of one dashboard: its lines, the JSON path each line shows (``""`` for
    the dashboard itself, None for the imports), and the title of each panel by its path."""
    panels = list(board_panels(board))
    used = sorted({panel["type"] for _, panel in panels if panel.get("type") in plugins})
    out: list[tuple[str, str | None]] = [
        (f"import type {{ Dashboard }} from '{DASHBOARD_MODULE}';", None),
        ("import type { Json, JsonPartial } from './json';", None),
        *((f"import type * as panel_{plugin} from '{plugins[plugin][0]}';", None) for plugin in used),
    ]
    _statement(out, "dashboard", board, "", "Json<Dashboard>")
    for index, (path, panel) in enumerate(panels):
        if panel.get("type") not in plugins:
            continue
        plugin, (_, declared) = panel["type"], plugins[panel["type"]]
        for part, value, interface in (
                ("options", panel.get("options", {}), "Options"),
                ("fieldConfig.defaults.custom", panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {}),
                 "FieldConfig")):
            kind = f"JsonPartial<panel_{plugin}.{interface}>" if interface in declared else "Record<string, never>"
            _statement(out, f"panel{index}_{part.split('.')[-1]}", value, f"{path}.{part}", kind)
    titles = {path: panel.get("title", "") for path, panel in panels}
    return [text for text, _ in out], [where for _, where in out], titles


def _statement(out: list[tuple[str, str | None]], name: str, value: Any, path: str, kind: str) -> None:
    """``export const name = <value> satisfies kind;``, one line per JSON member."""
    start = len(out)
    _literal(out, value, path, 0, "")
    text, where = out[-1]
    out[-1] = (text.removesuffix(",") + f" satisfies {kind};", where)
    out[start] = (f"export const {name} = " + out[start][0], out[start][1])


def _literal(out: list[tuple[str, str | None]], value: Any, path: str, depth: int, head: str) -> None:
    # A member per line, so that a diagnostic's line names the member (trailing commas are valid).
    pad = "  " * depth
    if isinstance(value, dict) and value:
        out.append((f"{pad}{head}{{", path))
        for key, item in value.items():
            _literal(out, item, f"{path}.{key}", depth + 1, json.dumps(key) + ": ")
        out.append((f"{pad}}},", path))
    elif isinstance(value, list) and value:
        out.append((f"{pad}{head}[", path))
        for index, item in enumerate(value):
            _literal(out, item, f"{path}[{index}]", depth + 1, "")
        out.append((f"{pad}],", path))
    else:
        out.append((f"{pad}{head}{json.dumps(value)},", path))


def _diagnostics(output: str, places: dict[str, tuple[str, list[str | None], dict[str, str]]]) -> Iterator[str]:
    """The compiler's errors, each located by dashboard, JSON path and panel title."""
    for line in output.splitlines():
        match = _DIAGNOSTIC.fullmatch(line.strip())
        if match is None:
            continue  # a continuation of the previous message: its first line says enough
        message = match["message"]
        if len(message) > _MESSAGE_CHARS:
            message = message[:_MESSAGE_CHARS] + "…"
        name = Path(match["file"]).name
        if name not in places:
            yield f"{match['file']}({match['line']},{match['column']}): {message}"
            continue
        uid, paths, titles = places[name]
        where = paths[int(match["line"]) - 1] if int(match["line"]) <= len(paths) else None
        if where is None:
            yield f"{name} line {match['line']}: {message}"
            continue
        owner = max((path for path in titles if where == path or where.startswith((path + ".", path + "["))),
                    key=len, default=None)
        title = f" (panel {titles[owner]!r})" if owner is not None else ""
        yield f"{uid}{where}{title}: {message}"
