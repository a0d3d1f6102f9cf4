"""A checked definition drawn as a graph (`saga-defs graph`, docs/definitions.md "Tooling"): Mermaid, Graphviz DOT,
or nodes and edges as data for tools.

What the graph says is the engine's rule (coordinator/engine/engine.py), not a second model of it:

- the steps run in order from `start`; the last one's success ends the saga `succeeded`;
- a step up to the pivot (every step, without one) that fails for good turns the saga to compensating: a rejected
  call applied nothing, so the undo starts at the nearest earlier step with a compensation; a call that may have
  applied (unknown outcome, deadline) is undone too, so the undo starts at its own compensation;
- the undo chain runs the compensations in reverse order and ends `failed`; a compensation past its budget parks
  the saga for an operator;
- past the pivot a retriable step is never compensated: past its policy's bounds the saga is parked.

Node ids are `start`, `step_<id>`, `undo_<id>`, `succeeded`, `failed`, `parked` (a step id is `[a-z][a-z0-9_]*`,
so no id clashes and every id is safe in both languages). Output is deterministic: tests compare it as text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from common.definitions.model import Definition, Kind, Step

PIVOT_NOTE = "point of no return"


class NodeType(enum.StrEnum):
    START = "start"
    STEP = "step"
    COMPENSATION = "compensation"
    END = "end"


class EdgeType(enum.StrEnum):
    FORWARD = "forward"
    """The step succeeded: the next one runs (or the saga succeeded)."""
    FAIL = "fail"
    """The step failed for good before or at the pivot: the saga compensates from here."""
    COMPENSATE = "compensate"
    """One compensation done: the one of the step before runs (or the saga failed)."""
    PARK = "park"
    """Past its policy's bounds (a retriable step, or a compensation): the saga waits for an operator."""

    @property
    def dashed(self) -> bool:
        return self is not EdgeType.FORWARD


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    type: NodeType
    label: tuple[str, ...]
    """Lines of the label."""
    step: Step | None = None


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    type: EdgeType
    label: str = ""


@dataclass(frozen=True, slots=True)
class Graph:
    definition: Definition
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]

    def as_dict(self) -> dict[str, Any]:
        d = self.definition
        nodes = []
        for n in self.nodes:
            entry: dict[str, Any] = {"id": n.id, "type": n.type.value, "label": list(n.label)}
            if n.step is not None:
                s = n.step
                entry |= {"step": s.id, "number": s.number, "kind": s.kind.value, "service": s.endpoint}
                call = s.call if n.type is NodeType.STEP else s.compensation
                entry["method"] = call.method if call else None
                entry["pivot"] = n.type is NodeType.STEP and s.kind is Kind.PIVOT
                entry["retriable"] = n.type is NodeType.STEP and s.kind is Kind.RETRIABLE
            nodes.append(entry)
        edges = [
            {"from": e.source, "to": e.target, "type": e.type.value, "label": e.label, "dashed": e.type.dashed}
            for e in self.edges
        ]
        return {"name": d.name, "version": d.version, "hash": d.hash, "nodes": nodes, "edges": edges}


def _step_node(s: Step) -> Node:
    kind = f"pivot: {PIVOT_NOTE}" if s.kind is Kind.PIVOT else s.kind.value
    return Node(f"step_{s.id}", NodeType.STEP, (f"{s.number}. {s.id}", kind, s.call.method), s)


def _undo_node(s: Step) -> Node:
    assert s.compensation is not None
    return Node(f"undo_{s.id}", NodeType.COMPENSATION, (f"undo {s.id}", s.compensation.method), s)


def build(definition: Definition) -> Graph:
    """The definition's graph: nodes in a stable order (start, steps, compensations, ends), edges likewise."""
    steps = definition.steps
    pivot = definition.pivot
    undoable = [s for s in steps if s.compensation is not None and (not pivot or s.number <= pivot)]
    retriable = [s for s in steps if s.kind is Kind.RETRIABLE]
    nodes = [Node("start", NodeType.START, ("start", definition.input_type.DESCRIPTOR.full_name))]
    nodes += [_step_node(s) for s in steps]
    nodes += [_undo_node(s) for s in undoable]
    nodes.append(Node("succeeded", NodeType.END, ("succeeded",)))
    nodes.append(Node("failed", NodeType.END, ("failed",)))  # the first step can always fail for good
    if undoable or retriable:
        nodes.append(Node("parked", NodeType.END, ("parked for an operator",)))

    def undo_from(number: int) -> str:
        """Where the undo chain starts when the steps before `number` ran: the nearest earlier compensation."""
        earlier = [s for s in undoable if s.number < number]
        return f"undo_{earlier[-1].id}" if earlier else "failed"

    edges = [Edge("start", f"step_{steps[0].id}", EdgeType.FORWARD)]
    for s, after in zip(steps, [*steps[1:], None], strict=True):
        edges.append(Edge(f"step_{s.id}", f"step_{after.id}" if after else "succeeded", EdgeType.FORWARD, "ok"))
        if s.kind is Kind.RETRIABLE:
            edges.append(Edge(f"step_{s.id}", "parked", EdgeType.PARK, "retries exhausted"))
        elif s.compensation is None:
            edges.append(Edge(f"step_{s.id}", undo_from(s.number), EdgeType.FAIL, "fails"))
        else:
            edges.append(Edge(f"step_{s.id}", undo_from(s.number), EdgeType.FAIL, "rejected"))
            edges.append(Edge(f"step_{s.id}", f"undo_{s.id}", EdgeType.FAIL, "may have applied"))
    for s in reversed(undoable):
        edges.append(Edge(f"undo_{s.id}", undo_from(s.number), EdgeType.COMPENSATE, "done"))
    for s in undoable:
        edges.append(Edge(f"undo_{s.id}", "parked", EdgeType.PARK, "retries exhausted"))
    return Graph(definition, tuple(nodes), tuple(edges))


# Mermaid: a shape per node type and step kind, a class to colour the pivot, retriable steps and compensations.
_MERMAID_SHAPES = {"start": ('(["', '"])'), "end": ('(["', '"])'), "pivot": ('{{"', '"}}'), "retriable": ('[["', '"]]')}
_MERMAID_CLASSES = (
    "classDef pivot fill:#fde2e1,stroke:#c0392b,stroke-width:3px",
    "classDef retriable fill:#fff4d6,stroke:#b7950b",
    "classDef undo fill:#eef3fb,stroke:#2e5c9a,stroke-dasharray:4 3",
    "classDef terminal fill:#f4f4f4,stroke:#555",
)


def _mermaid_class(n: Node) -> str:
    if n.type is NodeType.STEP and n.step is not None and n.step.kind in (Kind.PIVOT, Kind.RETRIABLE):
        return n.step.kind.value
    if n.type is NodeType.COMPENSATION:
        return "undo"
    if n.type in (NodeType.START, NodeType.END):
        return "terminal"
    return ""


def mermaid(graph: Graph) -> str:
    """`flowchart LR`: forward edges solid, failure, compensation and parking edges dotted (Mermaid's dashed)."""
    lines = ["flowchart LR"]
    for n in graph.nodes:
        cls = _mermaid_class(n)
        opening, closing = _MERMAID_SHAPES.get(cls if cls in ("pivot", "retriable") else n.type.value, ('["', '"]'))
        label = "<br/>".join(part.replace('"', "#quot;") for part in n.label)
        lines.append(f"  {n.id}{opening}{label}{closing}")
    for e in graph.edges:
        arrow = "-.->" if e.type.dashed else "-->"
        label = f"|{e.label}|" if e.label else ""  # labels are plain words: no quoting needed
        lines.append(f"  {e.source} {arrow}{label} {e.target}")
    lines += [f"  {c}" for c in _MERMAID_CLASSES]
    by_class: dict[str, list[str]] = {}
    for n in graph.nodes:
        if cls := _mermaid_class(n):
            by_class.setdefault(cls, []).append(n.id)
    lines += [f"  class {','.join(ids)} {cls}" for cls, ids in by_class.items()]
    return "\n".join(lines) + "\n"


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _dot_quote(text: str) -> str:
    return f'"{_dot_escape(text)}"'


def _dot_node_attributes(n: Node) -> dict[str, str]:
    if n.type in (NodeType.START, NodeType.END):
        return {"shape": "oval", "style": "filled", "fillcolor": "#f4f4f4"}
    if n.type is NodeType.COMPENSATION:
        return {"shape": "box", "style": "dashed", "color": "#2e5c9a"}
    assert n.step is not None
    if n.step.kind is Kind.PIVOT:
        return {"shape": "hexagon", "style": "filled,bold", "fillcolor": "#fde2e1", "color": "#c0392b"}
    if n.step.kind is Kind.RETRIABLE:
        return {"shape": "box", "peripheries": "2", "style": "filled", "fillcolor": "#fff4d6"}
    return {"shape": "box"}


def dot(graph: Graph) -> str:
    """Graphviz: `dot -Tsvg`. Failure, compensation and parking edges dashed."""
    lines = [f"digraph {_dot_quote(graph.definition.name)} {{", "  rankdir=LR;", '  node [fontname="Helvetica"];']
    for n in graph.nodes:
        # Lines joined by DOT's own "\\n" escape, after each line is escaped.
        label = '"' + "\\n".join(_dot_escape(part) for part in n.label) + '"'
        rendered = ", ".join(f"{k}={_dot_quote(v)}" for k, v in _dot_node_attributes(n).items())
        lines.append(f"  {n.id} [label={label}, {rendered}];")
    for e in graph.edges:
        attributes = {}
        if e.label:
            attributes["label"] = _dot_quote(e.label)
        if e.type.dashed:
            attributes["style"] = "dashed"
        rendered = ", ".join(f"{k}={v}" for k, v in attributes.items())
        lines.append(f"  {e.source} -> {e.target}" + (f" [{rendered}]" if rendered else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"
