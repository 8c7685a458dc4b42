"""Reading the tables of `leaderboard/index.html` back (shared by the HTML and submission tests)."""

from __future__ import annotations

from html.parser import HTMLParser


class Tables(HTMLParser):
    """Rows of every <table id=…>: each cell as (text, data-value or None); plus <body> attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, str | None]]]] = {}
        self.table_attrs: dict[str, dict[str, str | None]] = {}
        self.headers: dict[str, list[str]] = {}
        self.body: dict[str, str | None] = {}
        self._table: str | None = None
        self._row: list[tuple[str, str | None]] | None = None
        self._cell: list[str] | None = None
        self._value: str | None = None
        self._in_head = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "body":
            self.body = attributes
        elif tag == "table" and attributes.get("id"):
            self._table = attributes["id"]
            self.tables[self._table] = []
            self.headers[self._table] = []
            self.table_attrs[self._table] = attributes
        elif self._table and tag == "thead":
            self._in_head = True
        elif self._table and tag == "th" and self._in_head:
            self.headers[self._table].append(attributes.get("data-key") or "")
        elif self._table and tag == "tr" and not self._in_head:
            self._row = []
        elif self._row is not None and tag == "td":
            self._cell, self._value = [], attributes.get("data-value")

    def handle_endtag(self, tag: str) -> None:
        if tag == "thead":
            self._in_head = False
        elif tag == "td" and self._cell is not None and self._row is not None:
            self._row.append(("".join(self._cell).strip(), self._value))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def records(self, table: str) -> list[dict[str, tuple[str, str | None]]]:
        return [dict(zip(self.headers[table], row, strict=True)) for row in self.tables[table]]


def parse(text: str) -> Tables:
    parser = Tables()
    parser.feed(text)
    return parser
