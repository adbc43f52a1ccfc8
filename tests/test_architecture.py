"""The house rules (docs/architecture.md): stages import only downwards, no import circles, no module over 500
lines, every public face the README and docs name still works, and the picture in the docs is the code's.

`python tests/test_architecture.py` rewrites the stage graph in docs/architecture.md from the code.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_LINES = 500
GRAPH_BEGIN, GRAPH_END = "<!-- stage-graph:begin -->", "<!-- stage-graph:end -->"
CROSS_CUTTING = {"errors", "redaction", "runner", "outputs"}  # any stage may import them; left out of the picture
LABELS = {"__main__": "python -m bmc_data", "publish": "python -m bmc_data.publish", "cli": "cli/",
          "report": "report/", "hub": "hub/", "selection": "selection/", "bridging": "bridging/",
          "providers": "providers/", "tokens": "tokens/", "pairs": "pairs/", "bmc_train": "bmc_train"}


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(cwd / "pyproject.toml"), "--no-cache"], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(cwd), "PATH": ""})


def test_import_contracts_hold():
    proc = _lint(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "4 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("bmc_data/errors.py", "from bmc_data import redaction  # noqa", "no import circles"),  # errors <-> redaction
    ("bmc_data/pairs/schema.py", "from bmc_data.bridging import bridge  # noqa", "by stages"),  # an import upwards
    ("bmc_train/config.py", "from bmc_data.providers import base  # noqa", "leans only on"),
])
def test_contracts_catch_a_circle_and_an_upward_import(tmp_path, module, line, contract):
    for folder in ("bmc_data", "bmc_train", "bmc_demo"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0
    broken = [block for block in proc.stdout.split("\n\n") if "BROKEN" in block]
    assert any(contract in " ".join(block.split()) for block in broken), proc.stdout[-3000:]


def test_the_wheel_holds_every_package_and_template(tmp_path):
    """A user installs a wheel, not this checkout: every package folder, the prompts and the page resources must be
    in it (bmc_data.outputs once was not, and only the editable install hid it)."""
    import zipfile

    source = tmp_path / "src"  # the tracked files only: a local build/ folder would hide a missing package
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout.decode()
    for rel in filter(None, tracked.split("\0")):
        if (REPO / rel).is_file():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, source / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("bmc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {p.parent.relative_to(REPO).as_posix() for root in ("bmc_data", "bmc_train", "bmc_demo")
                for p in (REPO / root).rglob("__init__.py")}
    assert {f"{package}/__init__.py" for package in packages} <= names, sorted(
        package for package in packages if f"{package}/__init__.py" not in names)
    modules = {p.relative_to(REPO).as_posix() for package in packages for p in (REPO / package).glob("*.py")}
    assert modules <= names, sorted(modules - names)
    prompts = {f"bmc_data/prompts/{p.name}" for p in (REPO / "prompts").glob("*.yaml")}
    assert prompts and prompts <= names, sorted(prompts - names)
    data = {rel for rel in tracked.split("\0") if rel.startswith(("bmc_data/", "bmc_train/", "bmc_demo/"))
            and not rel.endswith(".py")}  # the page's scripts and styles, and anything else shipped beside code
    assert data and data <= names, sorted(data - names)


def test_no_module_over_500_lines():
    long = {str(p.relative_to(REPO)): n for p in [*REPO.glob("bmc_data/**/*.py"), *REPO.glob("bmc_train/**/*.py"), *REPO.glob("bmc_demo/**/*.py")]
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these along their ideas: {long}"


# --- public faces ---------------------------------------------------------------------------------------------
def _doc_text() -> str:
    return "\n".join(p.read_text() for p in DOCS)


def _imported_names(module: str) -> set[str]:
    names = set()
    for match in re.finditer(rf"from {re.escape(module)} import (\([^)]*\)|[^\n]+)", _doc_text()):
        names |= {n.split(" as ")[0].strip() for n in match.group(1).strip("()").split(",")}
    return {n for n in names if re.fullmatch(r"[A-Za-z_]\w*", n)}


@pytest.mark.parametrize("module", ["bmc_data", "bmc_data.providers", "bmc_train"])
def test_every_name_the_docs_import_exists(module):
    names = _imported_names(module)
    assert names, f"the docs import nothing from {module}: the pattern is stale"
    loaded = importlib.import_module(module)
    assert [n for n in sorted(names) if not hasattr(loaded, n)] == []


def test_every_dotted_path_and_file_the_docs_name_exists():
    text = _doc_text()
    missing = []
    for dotted in sorted(set(re.findall(r"\b(bmc_(?:data|train)(?:\.[A-Za-z_]\w*)+)", text))):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                obj = getattr(obj, attr, None)
            if obj is None:
                missing.append(dotted)
            break
    # source files and folders (not outputs a command writes, such as bench/results/*.json)
    for path in sorted(set(re.findall(r"\b((?:bmc_data|bmc_train|bench|tests|experiments)/[\w/-]*(?:\.py|\.yaml|/))", text))):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0  # an output
        if not (REPO / path).exists() and not ignored:
            missing.append(path)
    assert missing == []


@pytest.mark.parametrize("module", ["bmc_data", "bmc_data.publish", "bmc_data.report", "bmc_train"])
def test_entry_points_answer_help(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"python -m {module}" in proc.stdout


# --- the picture in docs/architecture.md ----------------------------------------------------------------------
def stage_of(module: str) -> str:
    """`bmc_data.hub.save` -> `hub`; top-level modules keep their own name; bmc_train is one box."""
    parts = module.split(".")
    if parts[0] == "bmc_train":
        return "bmc_train"
    return parts[1] if len(parts) > 1 else "bmc_data"


def stage_graph() -> str:
    """A mermaid flowchart of which stage imports which, read off the code with grimp (the graph import-linter
    checks), TYPE_CHECKING-only imports left out."""
    import grimp

    graph = grimp.build_graph("bmc_data", "bmc_train", exclude_type_checking_imports=True)
    edges = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = stage_of(module), stage_of(imported)
            # bmc_data/__init__ only re-exports lazily; errors, redaction and runner are everyone's
            if a != b and a != "bmc_data" and b not in CROSS_CUTTING | {"bmc_data"}:
                edges.add((a, b))
    lines = ["```mermaid", "flowchart TD"]
    lines += [f'    {a.strip("_")}["{LABELS.get(a, a)}"] --> {b.strip("_")}["{LABELS.get(b, b)}"]'
              for a, b in sorted(edges)]
    return "\n".join(lines + ["```"])


def _graph_block(text: str) -> str:
    start, end = text.index(GRAPH_BEGIN) + len(GRAPH_BEGIN), text.index(GRAPH_END)
    return text[start:end].strip()


def test_architecture_picture_is_drawn_from_the_code():
    doc = (REPO / "docs" / "architecture.md").read_text()
    assert _graph_block(doc) == stage_graph(), "run `python tests/test_architecture.py` to redraw it"


if __name__ == "__main__":
    path = REPO / "docs" / "architecture.md"
    doc = path.read_text()
    start, end = doc.index(GRAPH_BEGIN) + len(GRAPH_BEGIN), doc.index(GRAPH_END)
    path.write_text(doc[:start] + "\n" + stage_graph() + "\n" + doc[end:])
    print(f"redrew the stage graph in {path}")
