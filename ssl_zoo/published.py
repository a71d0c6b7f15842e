"""Tables that stay true: the program that measures a results table writes it into the README or a
docs page between two marker comments, `<!-- NAME table -->` and `<!-- /NAME table -->`, headed
by the date, the machine and the command. Nobody types a figure by hand, and a page whose
markers went missing is caught before hours of runs, not after."""

from __future__ import annotations

import os
import platform
import re
from datetime import date
from pathlib import Path

from ssl_zoo.errors import UserError

MARKER = re.compile(r"<!-- ([a-z0-9][a-z0-9_.-]*) table -->")  # prose names them in capitals


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name} table -->", f"<!-- /{name} table -->"


def marked_tables(page: Path) -> list[str]:
    """The names of the tables a page marks."""
    return MARKER.findall(page.read_text())


def require_markers(page: Path, name: str) -> str:
    """The page's text, which must hold the markers of `name`."""
    start, end = markers(name)
    text = page.read_text() if page.is_file() else ""
    if start not in text or end not in text:
        raise UserError(f"{page} lacks the markers {start} ... {end}, where its table goes")
    return text


def write_table(page: Path, name: str, text: str) -> None:
    """Replaces what lies between the page's markers of `name` with `text`."""
    start, end = markers(name)
    pattern = re.escape(start) + ".*?" + re.escape(end)
    body = text if text.endswith("\n") else text + "\n"
    page.write_text(
        re.sub(pattern, lambda _: f"{start}\n{body}{end}", require_markers(page, name), flags=re.S)
    )


def cpu_name() -> str:
    """The CPU's model: figures from different CPUs are not comparable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stamp(command: str) -> str:
    """The line that heads a published table: when, where and how it was measured."""
    return f"{date.today()}, {cpu_name()} with {os.cpu_count()} CPUs, `{command}`"
