"""Names and other data as literal text in Streamlit's Markdown (as_text), and rows as a
Markdown table."""

from __future__ import annotations

import re


def as_text(value: object) -> str:
    """``value`` (a file name, a path, a layout spec, an error about them) as literal text in
    st.markdown, st.error, st.warning, st.info, st.caption: the characters that make Markdown,
    HTML, LaTeX, links and images are backslash-escaped, line breaks become spaces, and an
    invisible WORD JOINER (U+2060) breaks what would become a bare link ("http://", "www.",
    "a@b.c": Streamlit links them after escapes are read), so a name such as
    ``**x** [a](http://h/) ![i](http://h/i.png)`` shows as typed: no bold, no link, no image
    fetched. Names are data. Plain names (letters, digits, ". , ( ) - / =") are unchanged."""
    text = _MARKUP.sub(r"\\\1", " ".join(str(value).splitlines()))
    text = _BARE_LINK.sub("\\1\u2060\\2", text)
    return _LIST_START.sub(r"\1\\\2", text)  # "1. x" or "- x" would start a list


def markdown_table(rows: list[dict]) -> str:
    """Rows with the same keys as a Markdown table for st.markdown, the keys as its header and
    every cell literal text (as_text: a spec's "|" or "*" is not markup)."""
    columns = list(rows[0]) if rows else []
    lines = [
        "| " + " | ".join(as_text(c) for c in columns) + " |",
        "|" + " --- |" * len(columns),
        *("| " + " | ".join(as_text(row[c]) for c in columns) + " |" for row in rows),
    ]
    return "\n".join(lines)


_MARKUP = re.compile(r"([\\`*_{}\[\]<>!#|~$:@&])")
_BARE_LINK = re.compile(r"(?i)(\w)(\\:(?=//)|\\@|(?<=www)\.)")  # http\://, a\@b, www.
_LIST_START = re.compile(r"^(\s*\d*)([.)+\-])")
