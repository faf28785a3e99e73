"""The import contract: the package is layered, and nothing imports upward.

The library layer (the copy engine and everything under it) knows nothing of config files,
schedules, logging set-up or the command line: callers pass plain values in. Within the
package, every module imports only modules below it in ``ORDER``, so there are no cycles and
a reader can take the modules from the bottom up. Imports are read from the source (at the
top of a module, inside functions, and under TYPE_CHECKING alike).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mirror"

# Bottom to top. A module may import only those before it.
LIBRARY = [
    "errors",
    "transport",  # sockets and the keep-alive pool under httpx; nothing of registries
    "challenge",
    "reference",
    "manifest",
    "credentials",
    "retry",
    "tagnames",  # how a tag reads: version, variant, full or alias
    "selection",
    "report",
    "quota",
    "auth",
    "store",
    "responses",
    "http",
    "registry",
    "concurrency",  # work shared once per run, turns at a tight pull budget
    "bundle",  # the inventory and bundle-file formats
    "files",  # atomic writes for layouts on disk
    "layout",  # oci:DIR, the second Store
    "plan",
    "upload",  # one blob's bytes into a session; the journal that resumes it after a restart
    "transfer",
    "referrers",  # signatures and referrers: found by tag or API, carried after their subject
    "copy",
    "airgap",  # inventories and the check before an import
]
APPLICATION = [
    "logs",
    "output",  # words on a terminal; below records and prune, which print
    "config",
    "state",  # the record of runs and tags; never imported by the library
    "clients",  # the registries, layouts and state a process shares
    "jobs",
    "records",  # status and history, for the CLI and the daemon's /status
    "prune",
    "notify",  # webhooks and apprise receivers, off the copy path
    "health",
    "daemon",
    "airgap_commands",
    "commands",
    "cli",
    "__main__",
]
ORDER = ["__init__", *LIBRARY, *APPLICATION]
# What the library must never reach for: the application's modules and its libraries.
NOT_IN_LIBRARY = {
    *(f"mirror.{m}" for m in APPLICATION),
    "mirror.state",
    "mirror.notify",
    "apscheduler",
    "structlog",
    "pydantic",
    "pydantic_settings",
    "prometheus_client",
    "rich",
}


def imports_of(module: str) -> set[str]:
    """Every module ``mirror/<module>.py`` imports, as dotted names (``mirror.x``, ``httpx``)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mirror":  # a submodule, or a name of the package itself
                found.update(
                    f"mirror.{a.name}" if (PACKAGE / f"{a.name}.py").exists() else "mirror"
                    for a in node.names
                )
            else:
                found.add(node.module)
    return found


def package_imports(module: str) -> set[str]:
    """The package's own modules that ``module`` imports (``mirror`` itself as __init__)."""
    names = set()
    for name in imports_of(module):
        if name == "mirror":
            names.add("__init__")
        elif name.startswith("mirror."):
            names.add(name.split(".")[1])
    return names


def test_every_module_has_a_place_in_the_order() -> None:
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert modules == set(ORDER), (
        f"place new modules in ORDER: {sorted(modules - set(ORDER))}; "
        f"gone: {sorted(set(ORDER) - modules)}"
    )


@pytest.mark.parametrize("module", ORDER)
def test_nothing_imports_upward(module: str) -> None:
    below = set(ORDER[: ORDER.index(module)])
    # The package's __init__ holds the version only; anything may read it.
    upward = package_imports(module) - below - {"__init__", module}
    assert not upward, f"mirror.{module} imports {sorted(upward)}, which sit above it"


@pytest.mark.parametrize("module", LIBRARY)
def test_the_library_knows_nothing_of_the_application(module: str) -> None:
    reached = {
        name
        for name in imports_of(module)
        if any(name == banned or name.startswith(banned + ".") for banned in NOT_IN_LIBRARY)
    }
    assert not reached, f"mirror.{module} (library) imports {sorted(reached)}"


def test_the_contract_sees_imports_inside_functions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lazy.py").write_text(
        "def f():\n    from mirror.config import load_config\n    import structlog\n"
        "from mirror import __version__\n"
    )
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", tmp_path)

    assert imports_of("lazy") == {"mirror.config", "structlog", "mirror"}
    assert package_imports("lazy") == {"config", "__init__"}
