"""The layering of docs/architecture.md, checked on the import graph that tests/test_imports.py
reads with ``ast``: a package imports only packages of a lower layer (imports inside one package
are free; cycles are test_imports.py's business).

An edge *to* the root package ``semcorr`` is not counted: ``from semcorr import distributed``
names the root, but it imports the submodule, and Python runs ``semcorr/__init__.py`` before any
submodule anyway.
"""

from __future__ import annotations

import re

import pytest

from shared_data import REPO
from test_imports import import_graph

#: Layer of each top-level package or module of ``semcorr`` (docs/architecture.md, "Layers").
LAYERS: dict[str, int] = {
    "errors": 0,
    **dict.fromkeys(("conventions", "config", "registry", "options", "distributed",
                     "samples", "geometry", "io"), 1),
    **dict.fromkeys(("hub", "devices"), 2),
    **dict.fromkeys(("features", "match", "data"), 3),
    **dict.fromkeys(("postprocess", "pipeline", "analysis"), 4),
    **dict.fromkeys(("viz", "transfer", "track", "semcorr"), 5),  # semcorr: the root's API
    "eval": 6,
    "train": 7,
    **dict.fromkeys(("cli", "server", "__main__"), 8),
}
#: The faces may use each other (``semcorr serve`` starts the server, which writes its
#: matches with ``semcorr match``'s writer); no other layer's members may.
FACES = {"cli", "server", "__main__"}


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def wrong_way(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """Edges ``a -> b`` between two packages where ``b``'s layer is not below ``a``'s (the
    faces apart)."""
    found = []
    for module, targets in graph.items():
        source = _package(module)
        for target in targets:
            if target == "semcorr" or _package(target) == source:
                continue
            if {source, _package(target)} <= FACES:
                continue
            if layers[_package(target)] >= layers[source]:
                found.append(f"{module} -> {target}")
    return sorted(found)


def test_every_package_has_a_layer() -> None:
    packages = {_package(m) for m in import_graph()}
    assert sorted(packages - set(LAYERS)) == []


def test_imports_point_down_the_layers() -> None:
    assert wrong_way(import_graph(), LAYERS) == []


def test_the_document_states_these_layers() -> None:
    """docs/architecture.md's table gives every package the layer checked here."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| `([\w.]+)` \|", text, flags=re.M)
    assert {name: int(layer) for layer, name in rows} == LAYERS


@pytest.mark.parametrize(("module", "target"), [
    ("semcorr.features.base", "semcorr.match.rules"),  # two stages of one layer
    ("semcorr.io.image", "semcorr.features.base"),  # foundation reaching up
    ("semcorr.io.image", "semcorr.geometry.warp"),  # two foundation modules
    ("semcorr.match.rules", "semcorr.eval.pck"),
    ("semcorr.eval.pck", "semcorr.train.losses"),
])
def test_a_wrong_arrow_is_seen(module: str, target: str) -> None:
    assert wrong_way({module: {target}, target: set()}, LAYERS) == [f"{module} -> {target}"]
    same_layer = LAYERS[_package(module)] == LAYERS[_package(target)]
    reverse = wrong_way({target: {module}, module: set()}, LAYERS)
    assert reverse == ([f"{target} -> {module}"] if same_layer else [])


def layer_table() -> str:
    """The table of docs/architecture.md: layer, package and the packages it imports today."""
    imports: dict[str, set[str]] = {name: set() for name in LAYERS}
    for module, targets in import_graph().items():
        imports[_package(module)] |= {_package(t) for t in targets if t != "semcorr"}
    rows = [f"| {LAYERS[name]} | `{name}` | {', '.join(sorted(imports[name] - {name})) or '—'} |"
            for name in sorted(LAYERS, key=lambda name: (LAYERS[name], name))]
    return "\n".join(["| layer | package | imports today |", "|---:|---|---|", *rows])


if __name__ == "__main__":
    print(layer_table())
