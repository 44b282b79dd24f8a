r"""Text from the bus cannot reorder what the wall shows: bidirectional controls removed.

A topic, category, username or summary is whatever a publisher put on the bus.
Unicode's explicit directional formatting characters (UAX #9, "Explicit
Directional Embeddings, Overrides and Isolates", and the implicit marks) change
the display order of the text around them: ``"\u202edetelpmoc"`` shows as
"completed".  Every text field the page, the web API, the ``tick``/``blink``
events and ``gource`` output carry from the bus goes through :func:`strip_bidi`;
the page also sets ``unicode-bidi: isolate`` on its text elements, so that
right-to-left names (Arabic, Hebrew) still show right, inside their own box.

The characters removed (:data:`BIDI_CONTROLS`): U+202A-U+202E (LRE, RLE, PDF,
LRO, RLO), U+2066-U+2069 (LRI, RLI, FSI, PDI), U+200E/U+200F (LRM, RLM) and
U+061C (ALM).  Counting is unchanged: Redis keys keep the bus's text, only what
is shown is cleaned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

#: The Unicode bidirectional control characters (UAX #9, table 2 and 3).
BIDI_CONTROLS = frozenset(
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
)

_BIDI = re.compile("[" + "".join(sorted(BIDI_CONTROLS)) + "]")


def strip_bidi(text: str) -> str:
    """``text`` without its bidirectional control characters (module docstring);
    other characters, right-to-left letters included, are kept as they are."""
    return _BIDI.sub("", text) if _BIDI.search(text) else text


def strip_bidi_all(texts: Iterable[str]) -> list[str]:
    """:func:`strip_bidi` of each text, in order."""
    return [strip_bidi(t) for t in texts]


def strip_bidi_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """``{name: count}`` with :func:`strip_bidi` applied to the names, in the same
    order; names that become equal are merged (counts added, at the first one's
    place), so no count is lost."""
    out: dict[str, int] = {}
    for name, n in counts.items():
        key = strip_bidi(name)
        out[key] = out.get(key, 0) + n
    return out
