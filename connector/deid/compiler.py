"""Compile a profile into lookup tables: one dictionary probe per element on the hot path.

Precedence (documented in ``docs/rules.md`` and tested):

* public elements: exact tag or keyword > tag range (fewer wildcards first) > VR > defaults;
* private elements: (group, creator, element) > (group, creator) > ``private: all`` > remove;
* at the same level the rule loaded later wins (an including file overrides what it includes);
* defaults: ``unlisted`` (standard attributes no rule names, kept by default) and ``unknown``
  (tags the data dictionary does not know, removed by default). VR rules apply only to attributes
  the dictionary knows, so an unknown element is never rescued by a VR rule.

Decisions are cached per tag (and per private creator); the cache only grows to the number of
distinct tags seen and its entries never change, so concurrent readers are safe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydicom.datadict import get_entry

from connector.deid.profile import OrderedRule, Profile
from connector.deid.rulefile import Selector, normalise_creator


@dataclass(frozen=True)
class Decision:
    action: str
    rule: OrderedRule | None
    basis: str  # "rule" | "unlisted" | "unknown" | "group-length" | "private-default" | "private-orphan"
    vr: str = ""  # data dictionary VR ("" when unknown; may be "US or SS")
    is_sq: bool = False

    @property
    def from_default(self) -> bool:
        return self.rule is None


@dataclass(frozen=True)
class Candidate:
    rule: OrderedRule
    level: str  # why it matched, e.g. "exact tag", "tag range", "VR"
    rank: tuple[int, int]


def dictionary_entry(tag: int) -> tuple[str, str] | None:
    """(VR, keyword) from the data dictionary, repeating groups included; None when unknown."""
    try:
        vr, _vm, _name, _retired, keyword = get_entry(tag)
    except KeyError:
        return None
    return vr, keyword


class CompiledRules:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._exact: dict[int, list[OrderedRule]] = {}
        self._ranges: list[OrderedRule] = []
        self._vr: dict[str, list[OrderedRule]] = {}
        self._priv_exact: dict[tuple[int, str, int], list[OrderedRule]] = {}
        self._priv_block: dict[tuple[int, str], list[OrderedRule]] = {}
        self._priv_all: list[OrderedRule] = []
        for o in profile.rules:
            s = o.rule.selector
            if s.kind == "tag":
                self._exact.setdefault(s.tag, []).append(o)
            elif s.kind == "range":
                self._ranges.append(o)
            elif s.kind == "vr":
                self._vr.setdefault(s.vr, []).append(o)
            elif s.creator is None:
                self._priv_all.append(o)
            elif s.element is None:
                self._priv_block.setdefault((s.group or 0, s.creator), []).append(o)
            else:
                self._priv_exact.setdefault((s.group or 0, s.creator, s.element), []).append(o)
        # Most specific first, then latest first: the first match is the winner.
        self._ranges.sort(key=lambda o: (-o.rule.selector.specificity, -o.order))
        self._unlisted = profile.defaults["unlisted"][0]
        self._unknown = profile.defaults["unknown"][0]
        self._public_cache: dict[int, Decision] = {}
        self._private_cache: dict[tuple[int, str], Decision] = {}
        self._block_cache: dict[tuple[int, str], bool] = {}
        all_removes = all(o.rule.action in ("remove", "clean") for o in self._priv_all[-1:])
        self._blocks_with_rules = {k[:2] for k in self._priv_exact} | set(self._priv_block)
        self._private_default_removes = all_removes
        self._class_cache: dict[str, Callable[[int], Decision] | None] = {}

    # -- hot path ---------------------------------------------------------------------------------

    def public(self, tag: int) -> Decision:
        """``tag`` must be a plain int: pydicom's BaseTag compares in Python and slows every probe."""
        d = self._public_cache.get(tag)
        if d is None:
            d = self._decide_public(tag)
            self._public_cache[tag] = d
        return d

    def for_class(self, sop_class: str) -> Callable[[int], Decision] | None:
        """The decision function for the top-level attributes of an object of ``sop_class``, with
        PS3.15's compound codes and removals resolved from the IOD's attribute types
        (:func:`typed_decision`); None when the profile has no types for the class."""
        fn = self._class_cache.get(sop_class, False)
        if fn is False:
            types = self.profile.attribute_types.get(sop_class)
            fn = _TypedDecisions(self, types).public if types else None
            self._class_cache[sop_class] = fn
        return fn  # type: ignore[return-value]

    def private(self, tag: int, creator: str) -> Decision:
        key = (tag, creator)
        d = self._private_cache.get(key)
        if d is None:
            d = self._decide_private(tag, creator)
            self._private_cache[key] = d
        return d

    def block_removed(self, group: int, creator: str) -> bool:
        """True when no element of this creator's block can survive: the walk then skips decisions."""
        return (group, creator) not in self._blocks_with_rules and self._private_default_removes

    # -- resolution -------------------------------------------------------------------------------

    def _decide_public(self, tag: int) -> Decision:
        entry = dictionary_entry(tag)
        vr = entry[0] if entry else ""
        is_sq = vr == "SQ"
        cands = self.public_candidates(tag)
        if cands:
            return Decision(cands[0].rule.rule.action, cands[0].rule, "rule", vr, is_sq)
        if tag & 0xFFFF == 0:
            return Decision("remove", None, "group-length", vr, False)  # recomputed or dropped on write
        if entry is None:
            return Decision(self._unknown, None, "unknown", vr, False)
        return Decision(self._unlisted, None, "unlisted", vr, is_sq)

    def _decide_private(self, tag: int, creator: str) -> Decision:
        cands = self.private_candidates(tag, creator)
        if cands:
            return Decision(cands[0].rule.rule.action, cands[0].rule, "rule")
        return Decision("remove", None, "private-default")

    def public_candidates(self, tag: int) -> list[Candidate]:
        """Every rule that matches ``tag``, winner first (used by the engine and by ``rules explain``)."""
        out: list[Candidate] = []
        for o in self._exact.get(tag, ()):
            out.append(Candidate(o, "exact tag or keyword", (40, o.order)))
        for o in self._ranges:
            s = o.rule.selector
            if tag & s.mask == s.value:
                out.append(Candidate(o, "tag range", (s.specificity, o.order)))
        entry = dictionary_entry(tag)
        if entry is not None:
            for vr in entry[0].split(" or "):
                for o in self._vr.get(vr, ()):
                    out.append(Candidate(o, "VR", (5, o.order)))
        out.sort(key=lambda c: (-c.rank[0], -c.rank[1]))
        return out

    def private_candidates(self, tag: int, creator: str) -> list[Candidate]:
        group, low = tag >> 16, tag & 0xFF
        creator = normalise_creator(creator)
        out: list[Candidate] = []
        for o in self._priv_exact.get((group, creator, low), ()):
            out.append(Candidate(o, "private creator and element", (30, o.order)))
        for o in self._priv_block.get((group, creator), ()):
            out.append(Candidate(o, "private creator block", (20, o.order)))
        for o in self._priv_all:
            out.append(Candidate(o, "every private element", (10, o.order)))
        out.sort(key=lambda c: (-c.rank[0], -c.rank[1]))
        return out

    @property
    def unlisted_action(self) -> str:
        return self._unlisted


class _TypedDecisions:
    """Top-level decisions for one IOD: the profile's, then :func:`typed_decision`; cached per tag."""

    def __init__(self, rules: CompiledRules, types: dict[int, int]) -> None:
        self._rules, self._types = rules, types
        self._cache: dict[int, Decision] = {}

    def public(self, tag: int) -> Decision:
        d = self._cache.get(tag)
        if d is None:
            d = typed_decision(self._rules.public(tag), self._types.get(tag, 3))
            self._cache[tag] = d
        return d


def compound_action(code: str, kind: int, current: str) -> str:
    """PS3.15's choice within a compound code (X/Z, X/D, Z/D, X/Z/D) for a type ``kind`` attribute:
    D for type 1, Z for type 2, X for type 3 (each only if the code offers it). A code offering U
    keeps its current action (a reference sequence keeps its items, UIDs remapped)."""
    parts = {p.rstrip("*") for p in code.split("/")}
    if "U" in parts:
        return current
    if kind == 1:
        return "dummy" if "D" in parts else current
    if kind == 2:
        return "empty" if "Z" in parts else "dummy" if "D" in parts else current
    return "remove" if "X" in parts else "empty" if "Z" in parts else current


def typed_decision(base: Decision, kind: int) -> Decision:
    """``base`` made safe for the attribute's PS3.3 type ``kind`` (1, 2, or 3 for anything else).

    Why: an object must leave as valid as it came. A type 1 attribute is never removed or emptied
    (dummy value; a sequence keeps its items, cleaned: no dummy item can be made safely); a type 2
    one is emptied instead of removed; a type 3 sequence that a rule empties is removed (an empty
    sequence needs 1-n items). Every replacement carries no information, so privacy is unchanged.
    """
    action = base.action
    code = base.rule.rule.table if base.rule is not None else ""
    if "/" in code:
        action = compound_action(code, kind, action)
    if kind == 1 and (action in ("remove", "empty") or (base.is_sq and action == "dummy")):
        action = "clean" if base.is_sq else "dummy"
    elif kind == 2 and (action == "remove" or (base.is_sq and action == "dummy")):
        action = "empty"
    elif kind == 3 and base.is_sq and action in ("empty", "dummy"):
        action = "remove"
    if action == base.action:
        return base
    return Decision(action, base.rule, "iod-type", base.vr, base.is_sq)


def describe(selector: Selector) -> str:
    if selector.kind == "tag":
        entry = dictionary_entry(selector.tag)
        return f"{selector.text()} {entry[1]}" if entry and entry[1] else selector.text()
    return selector.text()
