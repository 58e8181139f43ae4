"""Text normalisation shared by training and serving, so served user input looks like training input.

:func:`normalize_text` maps any string to the tokenised, lower-cased style of the DailyDialog
release (Li et al., IJCNLP 2017), where tokens are separated by single spaces. Rules, in order:

1. Unicode NFKC (full-width letters, digits and punctuation become ASCII; "…" becomes "...").
2. Typographic quotes map to ASCII: ’ ‘ ‚ ‛ ′ ` ´ become ', and “ ” „ ‟ ″ « » become ";
   the ideographic full stop 。 and ｡ become "." and the ideographic comma 、 becomes ",".
   Control characters become spaces; invisible format characters (soft hyphen, zero-width
   space and joiners, bidirectional marks, byte-order mark) are removed.
3. Lower-case (``str.lower``); NFKC is re-applied if lower-casing left the text unnormalised.
4. Protected spans are kept whole: URLs (``http://…``, ``www.…``), e-mail addresses,
   ``name.com``-style domains (com, org, net, edu, gov), numbers with inner ``.``, ``,`` or ``:``
   ("3.5", "1,000", "6:30") and dotted single-letter abbreviations ("e.g.", "p.m.", "u.s.a.").
   An abbreviation glued to the next word is split after its final period ("p.m.every").
5. A run of two or more periods becomes one "..." token.
6. Every other ``. , ? ! ; :`` and every double quote becomes a token of its own, so
   "right.But" becomes "right . but" and "well,ok?!" becomes "well , ok ? !".
7. An apostrophe not inside a word ("'hello'", "students'") becomes a token of its own.
8. A contraction split around its apostrophe ("let ' s", "don ’ t", "it' s") is joined into one
   token ("let's", "don't", "it's"); DailyDialog mostly writes contractions that way already.
   Suffixes joined: s, t, m, d, re, ve, ll; also "ma ' am" -> "ma'am" and "o ' clock" -> "o'clock".
9. Whitespace is collapsed to single spaces and the result is stripped.

The function is idempotent: ``normalize_text(normalize_text(x)) == normalize_text(x)``.
"""

from __future__ import annotations

import functools
import re
import unicodedata

__all__ = ["normalize_text"]

# Invisible format characters, removed: soft hyphen, zero-width spaces and (non-)joiners,
# left-to-right/right-to-left marks and embeddings, word joiner, byte-order mark.
_INVISIBLE_CODEPOINTS = (
    0xAD,
    *range(0x200B, 0x2010),
    *range(0x202A, 0x202F),
    *range(0x2060, 0x2065),
    0xFEFF,
)

_CHARACTER_MAP = str.maketrans(
    {
        "\u2019": "'",  # ’ right single quote, the usual typographic apostrophe
        "\u2018": "'",  # ‘
        "\u201a": "'",  # ‚
        "\u201b": "'",  # ‛
        "\u2032": "'",  # ′ prime
        "`": "'",
        "\u00b4": "'",  # ´ acute accent used as an apostrophe
        "\u201c": '"',  # “
        "\u201d": '"',  # ”
        "\u201e": '"',  # „
        "\u201f": '"',  # ‟
        "\u2033": '"',  # ″ double prime
        "\u00ab": '"',  # «
        "\u00bb": '"',  # »
        "\u3002": ".",  # 。 ideographic full stop
        "\uff61": ".",  # ｡ half-width ideographic full stop
        "\u3001": ",",  # 、 ideographic comma
        # Control characters (C0/C1) become spaces, so "a\x00b" stays two words.
        **{chr(c): " " for c in (*range(0x00, 0x20), *range(0x7F, 0xA0))},
        **dict.fromkeys(map(chr, _INVISIBLE_CODEPOINTS)),
    }
)

# One left-to-right scan: protected spans first (kept as they are), then punctuation to split off.
# Look-arounds of the protected spans name only characters this scan never changes (word
# characters, @ / + -), so a second pass makes the same decisions: that is what keeps it idempotent.
_WEB_SPANS = r"""
    (?<![\w@/+-])(?:https?://|www\.)[^\s']*[^\s.,?!;:"']                     # URL
  | (?<![\w+-])[\w+-][\w.+-]*@[\w-]+(?:\.[\w-]+)+                           # e-mail address
  | (?<![\w@/+-])[\w-]+(?:\.[\w-]+)*\.(?:com|org|net|edu|gov)(?![\w-])      # domain
"""
_TEXT_SPANS = r"""
    (?P<number>\d+(?:[.,:]\d+)+)                                        # 3.5  1,000  6:30
  | (?P<abbrev>(?<![\w.])[^\W\d_](?:\.[^\W\d_])+(?!\w)\.?)                 # e.g.  p.m.
  | (?P<ellipsis>\.{2,})
  | (?P<punct>[.,?!;:"]|(?<!\w)'|'(?!\w))
"""
_PUNCTUATION_RE = re.compile(_TEXT_SPANS, re.VERBOSE)
_PUNCTUATION_WEB_RE = re.compile(f"(?P<web>{_WEB_SPANS}) | {_TEXT_SPANS}", re.VERBOSE)
# Every web span contains one of these, so text without them takes the faster scan (half the time).
_WEB_HINT_RE = re.compile(r"@|www\.|://|\.(?:com|org|net|edu|gov)")

# A contraction whose apostrophe was left standing alone: "let ' s" -> "let's"; plus the two
# other forms the release writes both ways, "ma ' am" and "o ' clock".
_SPLIT_CONTRACTION_RE = re.compile(
    r"(?<=\w)\s+'\s+(?=(?:s|t|m|d|re|ve|ll)(?!\w))|(?<=\bma)\s+'\s+(?=am\b)|(?<=\bo)\s+'\s+(?=clock\b)"
)


def _split_punctuation(match: re.Match[str]) -> str:
    """Replacement for one match of the punctuation scan: keep, pad or canonicalise the span."""
    group = match.lastgroup
    if group in ("web", "number"):
        return match.group()
    if group == "abbrev":
        # "p.m.every" -> "p.m. every"; an abbreviation without a final period stays glued.
        abbrev = match.group()
        return abbrev + " " if abbrev.endswith(".") else abbrev
    if group == "ellipsis":
        return " ... "
    return f" {match.group()} "


# cached: a request normalises the same turn and reply in several places (the retriever, the
# risk check, the blocklist, the classifier), and a retriever's replies recur across requests
@functools.lru_cache(maxsize=4096)
def normalize_text(text: str) -> str:
    """Normalise one utterance to DailyDialog's tokenised lower-case style (rules in the module doc)."""
    # Translate before NFKC too: NFKC turns "´" into a space plus a combining accent and "″" into "′′".
    text = (
        unicodedata.normalize("NFKC", text.translate(_CHARACTER_MAP))
        .translate(_CHARACTER_MAP)
        .lower()
    )
    if not unicodedata.is_normalized("NFKC", text):
        # Safety net: Unicode does not promise that lower-casing keeps a string NFKC-normalised.
        text = unicodedata.normalize("NFKC", text).translate(_CHARACTER_MAP)
    scan = _PUNCTUATION_WEB_RE if _WEB_HINT_RE.search(text) else _PUNCTUATION_RE
    text = scan.sub(_split_punctuation, text)
    text = " ".join(text.split())
    return _SPLIT_CONTRACTION_RE.sub("'", text)
