"""The closing policy of constrained decoding: how a row's document is closed within its ``max_tokens``.

The grammar alone does not make a complete answer: a row could still be inside a string when its ``max_tokens``
run out. So every row carries a closing path: tokens that, taken from where the row is, end its document (and
then the end token), never more than the row has tokens left. The closing policy writes it: the forced text the
grammar admits next (xgrammar's jump-forward string), else the first allowed of ``"``, ``}``, ``]``, ``,``, ``0``,
``false``, ..., else the allowed token of lowest id; where that would repeat a choice from the same parser state (a
string pattern's loop: ``false`` again and again inside ``[a-z]+``), the fewest single characters that reach a
state not met yet (the ``@`` of an email) or the end. A row starts with the policy's path from an empty answer (the
schema's shortest document: a ``max_tokens`` below it is an error before generation). At each step the row takes
the token the model chose if its document can still be closed within the tokens left after it (the current path
still ends the document from there, or the policy's path from there fits); otherwise it takes the next token of
its path. So the model chooses for as long as what is left to close, from the row's own state, fits its budget,
and every row ends in a complete JSON document that validates against its schema, by construction; an EOS comes
only when the document is complete.

It works on :mod:`.constrain`'s grammars and row states and on xgrammar's matchers; constrain calls
:func:`close_path` when it compiles a schema (its shortest document) and :func:`path_after` for each token a row
takes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .constrain import Grammar, RowState

#: Tokens tried, in order, when the closing policy writes a path: each ends or shortens what is open.
CLOSERS = ('"', "}", "]", ",", "0", "false", "{", "[", "null")
#: Tokens the closing policy may take from an empty answer before the schema is refused as impossible to answer.
MAX_CLOSE_STEPS = 4096
#: States a loop's way out (:func:`_escape`) may search before the schema is called impossible to close.
MAX_ESCAPE_NODES = 1024
#: Jump-forward strings whose tokens a grammar keeps (the policy meets the same few again and again).
MAX_ENCODED = 4096


def path_after(state: RowState, token: int, budget: int) -> list[int] | None:
    """A closing path of at most ``budget`` tokens from the row's state after ``token``: the row's current path if
    it still ends the document from there (the row is, say, still inside the same string), else the closing
    policy's; None if neither fits, or the grammar refuses ``token``."""
    after = state.matcher.fork()
    if not after.accept_token(token):
        return None
    if len(state.path) <= budget:
        probe = after.fork()
        if all(probe.accept_token(t) for t in state.path) and probe.is_terminated():
            return list(state.path)
    return close_path(state.grammar, after, budget)


def close_path(g: Grammar, matcher: Any, limit: int) -> list[int] | None:
    """The closing policy's tokens from ``matcher``'s state (which it advances: pass a fork) to the end token, or
    None if they take more than ``limit`` tokens: the text :func:`_policy` writes, tokenized afresh where that
    takes fewer tokens than the policy's own steps (``",`` for ``"`` then ``,``) and the grammar accepts it."""
    start = matcher.fork()
    steps = _policy(g, matcher, 2 * limit + 16)
    if steps is None:
        return None
    ids = g.encode(g.decode(steps[:-1])) + steps[-1:]  # the end token stays the end token
    if len(ids) < len(steps) and all(start.accept_token(t) for t in ids) and start.is_terminated():
        steps = ids
    return steps if len(steps) <= limit else None


def _policy(g: Grammar, matcher: Any, limit: int) -> list[int] | None:
    """The closing policy, a token a step, from ``matcher``'s state (advanced) to the end token (None: more than
    ``limit`` steps, or no way out of a loop): the first token of the grammar's forced text, else the first allowed
    of ``g.closers``, else the allowed token of lowest id. A choice the policy already made from the same state is
    a loop (``false`` again and again inside a pattern's ``[a-z]+``): the policy then takes the shortest way out
    that :func:`_escape` finds, to a state it has not met yet or to the end."""
    path: list[int] = []
    bitmask = _bitmask(g.vocab)
    chosen: dict[tuple[bytes, str], set[int]] = {}  # each state met (allowed set, parser items): the tokens chosen
    met: set[tuple[bytes, str]] = set()  # those states and those the ways out led to
    while not matcher.is_terminated():
        if len(path) >= limit:
            return None
        token = None
        try:
            text = matcher.find_jump_forward_string()
        except UnicodeDecodeError:  # forced text that ends inside a character (``[à-ü]``): none taken
            text = ""
        if text:
            ids = g.encoded.get(text)
            if ids is None:
                ids = g.encode(text)
                if len(g.encoded) < MAX_ENCODED:
                    g.encoded[text] = ids
            if ids and matcher.accept_token(ids[0]):
                token = ids[0]
        if token is None:
            matcher.fill_next_token_bitmask(bitmask, 0)
            words = bitmask[0].numpy()
            token = next((t for t in g.closers if _allowed(words, t)), None)
            if token is None:
                token = _first_allowed(words)
                if token is None:
                    return None
            key = (words.tobytes(), _parser_state(matcher))
            if token in chosen.get(key, ()):
                way = _escape(g, matcher, met, limit - len(path))
                if way is None:
                    return None
                path += way
                continue
            chosen.setdefault(key, set()).add(token)
            met.add(key)
            if not matcher.accept_token(token):
                return None
        path.append(token)
    return path


def _escape(g: Grammar, matcher: Any, met: set[tuple[bytes, str]], limit: int) -> list[int] | None:
    """The fewest single-character (or closer) tokens, at most ``limit``, that take ``matcher`` (advanced by them)
    to a state not in ``met`` (added to it) or to the end of its document; None if a breadth-first search of
    at most MAX_ESCAPE_NODES states finds none. A state met again (the same allowed set and parser items) is not
    searched again: ``[a-z]`` inside ``[a-z]+`` is one way, not 26, and ``false`` then ``f`` the same as ``f`` then
    ``false`` inside ``[a-z]{50,}``."""
    bitmask = _bitmask(g.vocab)
    frontier: list[tuple[Any, list[int]]] = [(matcher.fork(), [])]
    seen: set[tuple[bytes, str]] = set()  # the states met, reached first by the fewest tokens
    expanded = 0
    while frontier and expanded < MAX_ESCAPE_NODES:
        following: list[tuple[Any, list[int]]] = []
        for state, way in frontier:
            if len(way) >= limit or expanded >= MAX_ESCAPE_NODES:
                continue
            expanded += 1
            state.fill_next_token_bitmask(bitmask, 0)
            words = bitmask[0].numpy().copy()
            for t in (*g.closers, *g.singles, *g.stops):
                if not _allowed(words, t):
                    continue
                child = state.fork()
                child.accept_token(t)
                if child.is_terminated():
                    key = None
                else:
                    child.fill_next_token_bitmask(bitmask, 0)
                    key = (bitmask[0].numpy().tobytes(), _parser_state(child))
                    if key in seen:
                        continue
                    seen.add(key)
                if key is None or key not in met:
                    if key is not None:
                        met.add(key)
                    for tok in way + [t]:
                        matcher.accept_token(tok)
                    return way + [t]
                following.append((child, way + [t]))
        frontier = following
    return None


def _parser_state(matcher: Any) -> str:
    """The parser's items after the matcher's last token, as xgrammar prints them for debugging ("" where it does
    not): states with the same items and allowed set have the same futures (but for items that began inside the
    search, rare: a way out missed at worst, never a wrong token). Without them, states with the same allowed set
    count as one, which can hide a way out (``.`` and ``0`` inside ``[a-z0-9.]+\\.[a-z]{2,}``)."""
    show = getattr(matcher, "_debug_print_internal_state", None)
    if show is None:
        return ""
    text = show()
    return text[text.find("Last step"):]


def _allowed(words: Any, token: int) -> bool:
    """Whether ``token`` is set in a row of xgrammar's packed bitmask."""
    return 0 <= token < len(words) * 32 and bool((int(words[token >> 5]) >> (token & 31)) & 1)


def _first_allowed(words: Any) -> int | None:
    """The lowest token id set in a row of xgrammar's packed bitmask (32 tokens per int32 word), or None."""
    import numpy as np

    nonzero = np.flatnonzero(words)
    if not len(nonzero):
        return None
    word = int(words[nonzero[0]]) & 0xFFFFFFFF
    return int(nonzero[0]) * 32 + (word & -word).bit_length() - 1


def _bitmask(vocab: int) -> Any:
    """A one-row token bitmask of xgrammar's (packed, 32 tokens per int32 word) for a vocabulary of ``vocab``. The
    matchers the policy works on come from :mod:`.constrain`, which imported xgrammar (or said how to install it)."""
    import xgrammar

    return xgrammar.allocate_token_bitmask(1, vocab)
