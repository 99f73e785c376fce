"""One pass over an object's elements, at every depth, applying the compiled decisions.

Speed comes from not touching what is kept: ``Dataset.items()`` gives elements still encoded, a
kept element is never decoded and is written back byte for byte, a changed one is rewritten on its
encoded bytes when it can be (:mod:`connector.deid.encoded`), and an encoded sequence is processed
by :mod:`connector.deid.rawseq` without building pydicom datasets. pydicom's own elements are the
fallback for everything unusual; both paths share the decisions and the string-level functions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from connector.deid import encoded
from connector.deid.compiler import CompiledRules, Decision
from connector.deid.encoded import REMOVE, NeedsPydicom, NotApplicable
from connector.deid.freetext import AllowListCleaner
from connector.deid.rawseq import SequenceRewriter
from connector.deid.rulefile import Rule, normalise_creator
from connector.deid.values import (
    BINARY_VRS,
    NUMERIC_VRS,
    dummy_value,
    fit,
    kept_private_vr,
)

MAX_DEPTH = 32

UNDEFINED_LENGTH = 0xFFFFFFFF


class RuleFailure(Exception):
    """A rule could not be applied; carries the tag and action (never the value) for quarantine."""

    def __init__(self, tag: int, action: str, cause: str) -> None:
        super().__init__(f"{action} on ({tag >> 16:04X},{tag & 0xFFFF:04X}) failed: {cause}")
        self.tag, self.action, self.cause = tag, action, cause


class ObjectContext:
    """Per-object state of one walk (the walker holds none, so one walker serves every thread).

    It also keeps the object's privacy report: how many free-text tokens the cleaner replaced and
    which elements were removed (tags and counts, never values).
    """

    __slots__ = ("_cleaner", "_deny", "_vocabulary", "codec", "codestream_segments", "offset", "pseudonym",
                 "removed", "site")

    def __init__(self, pseudonym: str, offset: int, site: str, codec: str | None, vocabulary: frozenset[str],
                 deny: list[str]) -> None:
        self.pseudonym, self.offset, self.site, self.codec = pseudonym, offset, site, codec
        self._vocabulary, self._deny = vocabulary, deny
        self._cleaner: AllowListCleaner | None = None
        self.removed: Counter[int] = Counter()
        self.codestream_segments = 0  # COM/APPn segments removed from compressed pixel data

    def scrub(self, text: str) -> str:
        """Free text through the allow-list cleaner (built on first use: most objects have none)."""
        if self._cleaner is None:
            self._cleaner = AllowListCleaner(self._vocabulary, self._deny)
        return self._cleaner.clean(text)

    def note_removed(self, tag: int) -> None:
        self.removed[tag] += 1

    def report(self) -> dict[str, object]:
        """Counts and tags only: safe to log, store and show to a privacy officer."""
        stats = self._cleaner.stats if self._cleaner is not None else None
        return {
            "text_values_cleaned": stats.values_cleaned if stats else 0,
            "tokens_replaced": stats.tokens_replaced if stats else 0,
            "spans_replaced": stats.spans_replaced if stats else 0,
            "removed": {f"({t >> 16:04X},{t & 0xFFFF:04X})": n for t, n in sorted(self.removed.items())},
            "codestream_segments_removed": self.codestream_segments,
        }


def value_strings(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


class ElementWalker:
    def __init__(self, rules: CompiledRules, uid: Callable[[str], str], *, raw_sequences: bool = True) -> None:
        self.rules = rules
        self.uid = uid
        self.raw_sequences = raw_sequences  # False forces pydicom everywhere (used to test equivalence)

    def walk(self, ds: Dataset, ctx: ObjectContext, clean_scope: bool = False, depth: int = 0,
             top: Callable[[int], Decision] | None = None) -> None:
        """Apply the rules to ``ds`` and, recursively, its sequences. ``top``: the decisions for
        ``ds``'s own elements when they differ from the profile's (the IOD's attribute types,
        :meth:`CompiledRules.for_class`); items of sequences always use the profile's."""
        if depth > MAX_DEPTH:
            raise RuleFailure(0, "walk", "nesting-too-deep")
        decide = top or self.rules.public
        private: list[tuple[int, Any]] = []
        for key, _elem in list(ds.items()):
            tag = int(key)  # plain int: pydicom's BaseTag compares in Python, slowly
            if tag & 0x10000:
                private.append((tag, key))
                continue
            if tag < 0x00030000:
                del ds[key]  # command (0000) or file meta (0002) elements inside a data set
                ctx.note_removed(tag)
                continue
            d = decide(tag)
            action = d.action
            if action == "keep":
                if clean_scope and d.rule is None:
                    action = "clean"
                elif d.is_sq:
                    self._recurse(ds, key, ctx, clean_scope, depth)
                    continue
                else:
                    continue
            elif action == "remove":
                del ds[key]
                ctx.note_removed(tag)
                continue
            self._apply(ds, key, d, action, ctx, clean_scope, depth)
        if private:
            self._private(ds, private, ctx, clean_scope, depth)

    # -- sequences --------------------------------------------------------------------------------

    def _recurse(self, ds: Dataset, key: Any, ctx: ObjectContext, clean_scope: bool, depth: int) -> None:
        raw = ds.get_item(key)
        if (self.raw_sequences and type(raw) is RawDataElement and raw.length != UNDEFINED_LENGTH
                and raw.is_little_endian):
            rewriter = SequenceRewriter(self.rules, self.uid, raw.is_implicit_VR)
            try:
                new = rewriter.rewrite(raw.value or b"", ctx, ctx.codec, clean_scope, depth + 1)
            except NeedsPydicom:
                pass  # unusual encoding: pydicom parses this sequence below
            except NotApplicable as exc:
                raise RuleFailure(int(key), "walk", str(exc)) from None
            else:
                if new is not raw.value:
                    ds[key] = raw._replace(value=new, length=len(new))
                return
        try:
            items = ds[key].value
        except Exception as exc:
            raise RuleFailure(int(key), "walk", type(exc).__name__) from None
        for item in items or ():
            self.walk(item, ctx, clean_scope, depth + 1)

    # -- one element ------------------------------------------------------------------------------

    def _apply(self, ds: Dataset, key: Any, d: Decision, action: str, ctx: ObjectContext, clean_scope: bool,
               depth: int) -> None:
        raw = ds.get_item(key)
        rule = d.rule.rule if d.rule else None
        if type(raw) is RawDataElement and raw.length != UNDEFINED_LENGTH and d.vr != "SQ" and raw.VR != "SQ":
            vr = raw.VR if raw.VR and raw.VR != "UN" else d.vr.split(" or ")[0]
            if vr and not (raw.VR == "UN" and d.vr):
                try:
                    new = encoded.transform(raw.value or b"", vr, action, rule, ctx, self.uid, ctx.codec)
                except NeedsPydicom:
                    pass
                except NotApplicable as exc:
                    raise RuleFailure(int(key), action, str(exc)) from None
                else:
                    if new is REMOVE:
                        del ds[key]
                        ctx.note_removed(int(key))
                    elif new is not raw.value:
                        ds[key] = raw._replace(value=new, length=len(new))  # type: ignore[arg-type]
                    return
        try:
            elem = ds[key]
        except Exception as exc:
            raise RuleFailure(int(key), action, type(exc).__name__) from None
        vr = elem.VR.split(" or ")[0] if elem.VR else "UN"
        if vr == "SQ":
            if action in ("empty", "dummy"):
                ds[key] = DataElement(key, "SQ", DicomSequence())
            elif action in ("keep", "remap_uid", "shift_date", "clean"):
                self._recurse(ds, key, ctx, clean_scope or action == "clean", depth)
            else:
                raise RuleFailure(int(key), action, "not-applicable-to-sequence")
            return
        try:
            self._transform(ds, key, elem, vr, action, rule, ctx)
        except RuleFailure:
            raise
        except NotApplicable as exc:
            raise RuleFailure(int(key), action, str(exc)) from None
        except Exception as exc:
            raise RuleFailure(int(key), action, type(exc).__name__) from None

    def _transform(self, ds: Dataset, key: Any, elem: DataElement, vr: str, action: str, rule: Rule | None,
                   ctx: ObjectContext) -> None:
        """The same actions as :func:`connector.deid.encoded.transform`, on a decoded element."""
        if action == "remove":
            del ds[key]
            ctx.note_removed(int(key))
        elif action == "empty":
            elem.value = elem.empty_value
        elif action == "keep":
            pass
        elif action == "dummy" and vr != "UI":
            elem.value = dummy_value(vr)
        elif action in ("pseudonym", "replace"):
            if (vr in NUMERIC_VRS or vr in BINARY_VRS) and (action == "pseudonym" or vr not in ("DS", "IS")):
                raise NotApplicable("not-a-text-element")
            text = ctx.pseudonym if action == "pseudonym" else encoded.replacement_text(rule, ctx)
            elem.value = fit(text, vr)
        else:
            fn = encoded.ascii_function(vr, action, rule, ctx, self.uid)
            if fn is not None:
                self._map(elem, fn)
            elif vr in encoded.TEXT_CLEAN_VRS:
                self._map(elem, lambda v: fit(ctx.scrub(v), vr))
            elif vr in NUMERIC_VRS:
                pass
            elif vr in ("PN", "UR"):
                elem.value = elem.empty_value  # a person's name or a link has no safe equivalent
            else:
                del ds[key]  # binary content cannot be inspected: removed
                ctx.note_removed(int(key))

    @staticmethod
    def _map(elem: DataElement, fn: Callable[[str], str | None]) -> None:
        """Apply ``fn`` to each value; any value it cannot handle empties the element (fail closed)."""
        values = value_strings(elem.value)
        if not values:
            return
        out = [fn(v) for v in values]
        if any(v is None for v in out):
            elem.value = elem.empty_value
        else:
            elem.value = out if len(out) > 1 else out[0]

    # -- private elements -------------------------------------------------------------------------

    def _private(self, ds: Dataset, private: list[tuple[int, Any]], ctx: ObjectContext, clean_scope: bool,
                 depth: int) -> None:
        creators: dict[int, str | None] = {}
        creator_keys: list[tuple[int, Any]] = []
        used_blocks: set[int] = set()
        block_removed = self.rules.block_removed
        for tag, key in private:
            group, number = tag >> 16, tag & 0xFFFF
            if group <= 0x0007 or group == 0xFFFF or number < 0x0010:
                del ds[key]  # illegal private groups, private group lengths and reserved elements
                ctx.note_removed(int(key))
                continue
            if number <= 0x00FF:
                creator_keys.append((tag, key))
                continue
            block_tag = (group << 16) | (number >> 8)
            if block_tag not in creators:
                creators[block_tag] = self._creator(ds, block_tag)
            creator = creators[block_tag]
            if creator is None or block_removed(group, creator):
                del ds[key]  # no creator (nobody can say what it is), or nothing of the block is kept
                ctx.note_removed(int(key))
                continue
            d = self.rules.private(tag, creator)
            action = d.action
            if action in ("remove", "clean"):  # private content cannot be cleaned generically
                del ds[key]
                ctx.note_removed(int(key))
                continue
            raw = ds.get_item(key)
            raw_vr = getattr(raw, "VR", None)
            if action == "keep":
                if raw_vr == "SQ":
                    self._recurse(ds, key, ctx, clean_scope, depth)
                elif not kept_private_vr(raw_vr, tag, creator,
                                         raw.value if isinstance(raw.value, bytes) else None):
                    del ds[key]  # an OB/UN blob (or a value nobody can type) is never kept, listed or not
                    ctx.note_removed(tag)
                    continue
            elif raw_vr in (None, "UN") and action != "empty":
                del ds[key]  # without a known VR only keep and empty are safe
                ctx.note_removed(int(key))
                continue
            else:
                self._apply(ds, key, d, action, ctx, clean_scope, depth)
            if key in ds:
                used_blocks.add(block_tag)
        for tag, key in creator_keys:
            if tag not in used_blocks:
                del ds[key]
                ctx.note_removed(int(key))

    @staticmethod
    def _creator(ds: Dataset, tag: int) -> str | None:
        raw = ds.get_item(tag)
        if raw is None:
            return None
        value = raw.value
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        text = normalise_creator(str(value or ""))
        return text or None
