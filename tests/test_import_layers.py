"""The import graph of the client SDK and the shared code has no cycles, and ``cake_shared``
does not depend on the client SDK (the webhook signature rule lives in ``cake_shared.signing``,
which the client re-exports).

Read from the source with ``ast`` (nothing is imported), counting every import: at module level,
inside functions and under ``TYPE_CHECKING`` alike, since each is a dependency a reader must
follow and a lazy import inside a function is how a cycle usually hides.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cake_client", "cake_shared")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    """Module -> the modules of PACKAGES it imports (a package's own ``__init__`` aside)."""
    modules = {
        _module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                # ``from pkg import module`` imports that module.
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name and t not in PACKAGES}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_client_and_the_shared_code_import_without_cycles() -> None:
    assert _cycles(_graph()) == []


def test_the_shared_code_does_not_import_the_client() -> None:
    graph = _graph()
    upward = {m: sorted(t for t in ts if t.startswith("cake_client")) for m, ts in graph.items()}
    assert {m: ts for m, ts in upward.items() if m.startswith("cake_shared") and ts} == {}


def test_the_signing_rule_is_one_function_everywhere() -> None:
    import cake_client
    import cake_client.webhooks as client_webhooks
    import cake_shared.signing as signing

    assert cake_client.verify_signature is client_webhooks.verify_signature
    for name in ("sign", "verify_signature", "parse_signature", "SIGNATURE_HEADER"):
        assert getattr(client_webhooks, name) is getattr(signing, name)
