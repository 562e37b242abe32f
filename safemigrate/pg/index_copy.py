"""An existing index's definition, rebuilt CONCURRENTLY under another name on other columns.

A column swapped for a shadow (a bigint key swap's referencing columns) takes
every index that mentions it with it when it is dropped: a key column, an
``INCLUDE`` column, a column an expression or the ``WHERE`` reads. Rebuilding
each from its parts (columns, uniqueness, predicate) loses whatever the parts
leave out: ``DESC``, operator classes, collations, expressions, storage
parameters. So the copy starts from PostgreSQL's own text of the index
(``pg_get_indexdef``) and changes only three things: ``CONCURRENTLY``, the
name, and the swapped columns' identifiers, found by a small tokenizer that
knows the shapes that text takes (string literals, quoted identifiers,
casts, function calls, the keywords around column lists).
"""

import re

from .sql import q

_IDENT = r'(?:"(?:[^"]|"")*"|[^\s."(]+)'
_HEAD = re.compile(rf"CREATE (?P<unique>UNIQUE )?INDEX {_IDENT} ON (?P<only>ONLY )?(?:{_IDENT}\.)?{_IDENT} USING ")
#: Words after which an identifier is not a column: a type, a collation, a tablespace, NULLS FIRST/LAST.
_NOT_A_COLUMN_AFTER = {"COLLATE", "TABLESPACE", "NULLS"}


def copy_definition(definition, name, table, renames, *, concurrently=True):
    """``definition`` (``pg_get_indexdef``) as ``CREATE ... INDEX CONCURRENTLY name ON table``, columns renamed.

    ``renames``: ``{column: new column}``. ``concurrently=False`` leaves the
    word out (a rehearsal's repeat of a plain build, ``planning.rebuilds``).
    Raises ``ValueError`` on a text it does not recognise (nothing is guessed).
    """
    head = _HEAD.match(definition)
    if head is None:
        raise ValueError(f"not an index definition this copy understands: {definition}")
    rest = rename_identifiers(definition[head.end():], renames)
    how = "CONCURRENTLY " if concurrently else ""
    return (f"CREATE {head.group('unique') or ''}INDEX {how}{q(name)} ON {head.group('only') or ''}"
            f"{q(table)} USING {rest}")


def rename_identifiers(text, renames):
    """``text`` with every column identifier in ``renames`` replaced by its new name (quoted)."""
    out = []
    i, n = 0, len(text)
    previous = ""  # the last significant token
    while i < n:
        char = text[i]
        if char == "'":
            end = _string_end(text, i, escapes=previous.upper() == "E" and out and out[-1] == "E")
            out.append(text[i:end])
            previous, i = "'", end
        elif char == '"':
            end = i + 1
            while True:
                end = text.index('"', end)
                if text.startswith('""', end):
                    end += 2
                    continue
                break
            identifier = text[i + 1:end].replace('""', '"')
            end += 1
            out.append(_renamed(identifier, text[i:end], previous, text, end, renames))
            previous, i = identifier, end
        elif char.isalpha() or char == "_":
            end = i
            while end < n and (text[end].isalnum() or text[end] in "_$"):
                end += 1
            word = text[i:end]
            # An unquoted identifier is folded to lower case; pg_get_indexdef prints one unquoted only then.
            out.append(_renamed(word.lower(), word, previous, text, end, renames) if word == word.lower() else word)
            previous, i = word, end
        else:
            out.append(char)
            if not char.isspace():
                previous = "::" if char == ":" and previous == ":" else char
            i += 1
    return "".join(out)


def _renamed(identifier, original, previous, text, end, renames):
    if identifier not in renames:
        return original
    if previous in (".", "::") or previous.upper() in _NOT_A_COLUMN_AFTER:
        return original  # a qualified name's second part, a type, a collation, a tablespace
    following = text[end:end + 1]
    if following == "(" or following == "=":  # a function call, a storage parameter
        return original
    return q(renames[identifier])


def _string_end(text, start, escapes):
    """The index after the string literal that starts at ``start`` ('' doubled; backslashes in E'')."""
    i = start + 1
    while True:
        if escapes and text[i] == "\\":
            i += 2
            continue
        if text[i] == "'":
            if text.startswith("''", i):
                i += 2
                continue
            return i + 1
        i += 1
