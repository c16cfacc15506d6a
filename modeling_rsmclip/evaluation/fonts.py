"""Which installed font draws which text: the one glyph check behind every picture the package draws.

Labels in ten languages reach the plots and the map overlays. Matplotlib draws a character its font lacks as an
empty box (tofu), and says so only in a warning about "Glyph ... missing" that plotting code usually silences. So
before drawing, `check_glyphs` finds, from the fonts' own character maps (fontTools), the fonts that cover the
texts (DejaVu Sans first, then fallbacks with the missing characters, e.g. a CJK font), and names the texts that no
installed font can draw, with a warning. The caller then draws those texts another way (the overlays fall back to
class ids and a legend file) or replaces the missing characters with a visible placeholder (`displayable`).

Fonts installed after matplotlib built its font cache are found too: the system's font folders are scanned for files
the cache does not list, and those are added to matplotlib's font manager.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

BASE_FONT = "DejaVu Sans"
PLACEHOLDER = "\u25a1"  # white square, present in DejaVu Sans
INSTALL_HINT = "install a font that has them, e.g. Debian's fonts-noto-cjk or fonts-wqy-microhei"


@functools.lru_cache(maxsize=1)
def _font_coverage() -> tuple[tuple[str, frozenset[int]], ...]:
    """(family name, code points) of every font matplotlib knows or the system has, base font first."""
    from fontTools.ttLib import TTFont
    from matplotlib import font_manager

    known = {entry.fname for entry in font_manager.fontManager.ttflist}
    for path in font_manager.findSystemFonts():
        if path not in known:  # installed after matplotlib's font cache was built
            try:
                font_manager.fontManager.addfont(path)
            except Exception as err:  # an unreadable font file must not break plotting
                logger.debug("skipping font %s: %s", path, err)
    fonts: dict[str, frozenset[int]] = {}
    for entry in font_manager.fontManager.ttflist:
        # "Last Resort" fonts map every code point to a generic block symbol: they do not draw the text.
        if entry.name in fonts or entry.name.startswith("Last Resort"):
            continue
        try:
            with TTFont(entry.fname, fontNumber=0, lazy=True) as font:
                cmap = font.getBestCmap() or {}
        except Exception as err:  # an unreadable font file must not break plotting
            logger.debug("skipping font %s: %s", entry.fname, err)
            continue
        fonts[entry.name] = frozenset(cmap)
    ordered = sorted(fonts.items(), key=lambda item: item[0] != BASE_FONT)
    return tuple(ordered)


def font_plan(texts: Iterable[str], fonts: Sequence[str] | None = None) -> tuple[list[str], set[str]]:
    """Font families (base first, then fallbacks) for ``texts``, and the characters none of them has.

    ``fonts`` restricts the families to choose from (default: every installed font)."""
    needed = {ord(c) for text in texts for c in text if not c.isspace()}
    coverage = _font_coverage()
    if fonts is not None:
        allowed = set(fonts)
        coverage = tuple(item for item in coverage if item[0] in allowed)
    names = [name for name, _ in coverage]
    base_name = BASE_FONT if BASE_FONT in names else (names[0] if names else BASE_FONT)
    base = dict(coverage).get(base_name, frozenset())
    families = [base_name]
    uncovered = needed - base
    for name, points in coverage:
        if not uncovered:
            break
        if name != base_name and uncovered & points:
            families.append(name)
            uncovered -= points
    return families, {chr(p) for p in uncovered}


def displayable(text: str, missing: set[str]) -> str:
    """``text`` with the characters no font can draw replaced by a placeholder."""
    return "".join(PLACEHOLDER if c in missing else c for c in text)


@dataclass
class GlyphCheck:
    """The outcome of `check_glyphs`: ``families`` to draw with (base first, then fallbacks), the ``missing``
    characters that none of them has, and the ``undrawable`` texts that contain one (in the given order)."""

    families: list[str]
    missing: set[str] = field(default_factory=set)
    undrawable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing

    def can_draw(self, text: str) -> bool:
        return not set(text) & self.missing


def check_glyphs(
    texts: Iterable[str],
    *,
    what: str = "texts",
    where: object = None,
    fonts: Sequence[str] | None = None,
    fallback: str | None = None,
) -> GlyphCheck:
    """Fonts for ``texts`` (`font_plan`), and a warning naming the texts that no font can draw fully.

    Args:
        texts: everything the picture will write.
        what, where: words for the warning, e.g. ``"class labels"`` and the picture's path.
        fonts: restrict the families to choose from (default: every installed font).
        fallback: what the caller does instead, for the warning (default: drawn with a placeholder box).
    """
    texts = list(dict.fromkeys(texts))
    families, missing = font_plan(texts, fonts)
    undrawable = [text for text in texts if set(text) & missing]
    if undrawable:
        logger.warning(
            "no installed font can draw %d of the %s%s: %s (characters %s); %s; %s",
            len(undrawable),
            what,
            f" in {where}" if where is not None else "",
            ", ".join(repr(t if len(t) <= 40 else t[:37] + "...") for t in undrawable),
            "".join(sorted(missing)),
            fallback or f"they are drawn with {PLACEHOLDER} in their place",
            INSTALL_HINT,
        )
    return GlyphCheck(families, missing, undrawable)


__all__ = [
    "BASE_FONT",
    "GlyphCheck",
    "PLACEHOLDER",
    "check_glyphs",
    "displayable",
    "font_plan",
]
