"""A context as rich tables, for ``hearth context``: what a person checks before trusting it.

Works on the JSON form of a context (`Context.to_dict`, or the HTTP API's answer), so a
running robot's context and one read from its store print alike.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from hearthsync.context.feedback import moment


def render(reply: dict[str, Any]) -> Group:
    """The context in ``reply`` (``{"context": ..., "prompt": ...}``) as printable parts."""
    context = reply["context"]
    parts: list[Any] = [_header(context)]
    for part in (
        _preferences(context),
        _rows("events (recent)", ("when", "type", "text"), _events(context["events"])),
        _rows("recalled", ("score", "when", "text"), _recalled(context["recalled"])),
        _rows("where things are", ("object", "where", "owner"), _places(context["places"])),
        _rows("health", ("key", "value"), _health(context["health"])),
        _rows("routines active now", ("routine", "constraints"), _routines(context["routines"])),
    ):
        if part is not None:
            parts.append(part)
    return Group(*parts)


def _header(context: dict[str, Any]) -> Text:
    profile = context.get("profile") or {}
    name = profile.get("name") or context["user"]
    withheld = ", ".join(context["withheld"]) or "nothing"
    text = Text()
    text.append(f"{name} ({context['user']})", style="bold")
    text.append(f" · task {context['task']} · reads {', '.join(context['granted'])}")
    text.append(f" · withheld: {withheld}", style="yellow" if context["withheld"] else "")
    return text


def _preferences(context: dict[str, Any]) -> Table | None:
    if not context["preferences"]:
        return None
    table = Table("preference", "value", "source", "confidence", "why", "set aside",
                  title="preferences, resolved for now", title_justify="left")  # fmt: skip
    for pref in context["preferences"]:
        aside = "; ".join(f"{a['value']!s} ({a['reason']})" for a in pref["set_aside"])
        table.add_row(*_cells(
            pref["key"], str(pref["value"]), f"{pref['source']}, {pref['stage']}",
            f"{pref['confidence']:.2f}", pref["rule"], aside or "-",
        ))  # fmt: skip
    return table


def _rows(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table | None:
    if not rows:
        return None
    table = Table(*columns, title=title, title_justify="left")
    for row in rows:
        table.add_row(*_cells(*row))
    return table


def _cells(*values: str) -> list[Text]:
    """Cells as plain text: a table reads a str cell as markup, and what people said (an
    event's text, a preference's value) is not markup ("[/b]" in one raised MarkupError)."""
    return [Text(value) for value in values]


def _events(items: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [(_time(i["event"]["ts"]), i["event"]["type"], i["event"]["text"]) for i in items]


def _recalled(items: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [
        (f"{i.get('score', 0):.2f}", _time(i["event"]["ts"]), i["event"]["text"]) for i in items
    ]


def _time(ts_ms: int) -> str:
    return moment(ts_ms, None).strftime("%Y-%m-%d %H:%M")


def _places(items: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for item in items:
        placement = item["placement"]
        where = item.get("region_label") or placement.get("region") or "-"
        rows.append((str(placement["label"]), str(where), str(placement.get("owner") or "-")))
    return rows


def _health(items: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [(i["record"]["key"], str(i["record"]["value"])) for i in items]


def _routines(items: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [(i["routine"]["label"], ", ".join(i["routine"].get("constraints", ()))) for i in items]


def print_context(console: Console, reply: dict[str, Any]) -> None:
    console.print(render(reply))
