"""Apply the rules inside an encoded sequence, element by element, without pydicom datasets.

pydicom leaves a defined-length sequence encoded until it is accessed, then builds a Dataset per
item (tens of microseconds each) and re-encodes every element when writing. An Enhanced CT's
per-frame functional groups hold thousands of elements, nearly all kept as they are. Here each
element costs one header parse and one decision lookup: kept elements are copied byte for byte,
changed ones are encoded by :mod:`connector.deid.encoded`, and a sequence is rebuilt (with defined
lengths) only when something inside it changed.

Little endian only, explicit or implicit VR. Anything unusual raises :class:`NeedsPydicom` and the
caller hands the whole sequence to pydicom instead, so this is an optimisation, never a second
set of semantics: the decisions and the value functions are the engine's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.charset import convert_encodings
from pydicom.datadict import get_entry

from connector.deid.encoded import REMOVE, NeedsPydicom, NotApplicable, transform
from connector.deid.rulefile import normalise_creator
from connector.deid.values import kept_private_vr

if TYPE_CHECKING:
    from connector.deid.compiler import CompiledRules
    from connector.deid.encoded import ObjectContext

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")
_ITEM_HEADER = b"\xfe\xff\x00\xe0"
MAX_DEPTH = 32


def _item_header(buf: bytes, pos: int) -> tuple[int, int]:
    """(tag, length) of the 8-byte item or delimiter header at ``pos`` (implicit VR layout)."""
    if pos + 8 > len(buf):
        raise NeedsPydicom("truncated")
    group, number = _TAG.unpack_from(buf, pos)
    return group << 16 | number, _U32.unpack_from(buf, pos + 4)[0]


@dataclass
class _Element:
    tag: int
    vr: str  # "" in implicit VR
    start: int  # header start
    value_start: int
    value_end: int  # end of the value (for undefined length: before the delimiter)
    end: int  # end of the encoded element (after the delimiter, if any)
    undefined: bool


class SequenceRewriter:
    """Rewrites encoded sequence values with the engine's rules and value functions."""

    def __init__(self, rules: CompiledRules, uid, implicit: bool) -> None:
        self.rules = rules
        self.uid = uid
        self.implicit = implicit

    # -- parsing ----------------------------------------------------------------------------------

    def element_at(self, buf: bytes, pos: int) -> _Element | None:
        """The element whose header starts at ``pos``; None for an item delimiter."""
        if pos + 8 > len(buf):
            raise NeedsPydicom("truncated")
        group, number = _TAG.unpack_from(buf, pos)
        tag = group << 16 | number
        if tag == _ITEM_END:
            return None
        if self.implicit:
            vr, length, value_start = "", _U32.unpack_from(buf, pos + 4)[0], pos + 8
        else:
            raw_vr = buf[pos + 4:pos + 6]
            if raw_vr in _LONG_VRS:
                length, value_start = _U32.unpack_from(buf, pos + 8)[0], pos + 12
            else:
                length, value_start = _U16.unpack_from(buf, pos + 6)[0], pos + 8
            if not raw_vr.isalpha() or not raw_vr.isupper():
                raise NeedsPydicom("bad VR")
            vr = raw_vr.decode("ascii")
        if length == _UNDEFINED:
            value_end, after = self._skip_undefined(buf, value_start)
            return _Element(tag, vr, pos, value_start, value_end, after, True)
        value_end = value_start + length
        if value_end > len(buf):
            raise NeedsPydicom("truncated")
        return _Element(tag, vr, pos, value_start, value_end, value_end, False)

    def _elements(self, buf: bytes, pos: int, end: int | None) -> tuple[list[_Element], int]:
        """Elements from ``pos`` to ``end``, or to the item delimiter when ``end`` is None."""
        out: list[_Element] = []
        while True:
            if end is not None and pos >= end:
                if pos != end:
                    raise NeedsPydicom("overrun")
                return out, pos
            element = self.element_at(buf, pos)
            if element is None:
                if end is not None:
                    raise NeedsPydicom("stray delimiter")
                return out, pos + 8
            out.append(element)
            pos = element.end

    def _items(self, buf: bytes, pos: int, end: int | None) -> tuple[list[list[_Element]], int]:
        """Items of a sequence value from ``pos`` to ``end`` (None: to the sequence delimiter)."""
        items: list[list[_Element]] = []
        while True:
            if end is not None and pos >= end:
                return items, pos
            tag, length = _item_header(buf, pos)
            if tag == _SEQ_END:
                if end is not None:
                    raise NeedsPydicom("stray delimiter")
                return items, pos + 8
            if tag != _ITEM:
                raise NeedsPydicom("not an item")
            if length == _UNDEFINED:
                elements, pos = self._elements(buf, pos + 8, None)
            else:
                elements, pos = self._elements(buf, pos + 8, pos + 8 + length)
            items.append(elements)

    def _skip_undefined(self, buf: bytes, pos: int) -> tuple[int, int]:
        """(end of value, end after the delimiter) of an undefined-length value starting at ``pos``:
        a sequence of items, or encapsulated fragments (which are items too, without elements)."""
        start = pos
        while True:
            tag, length = _item_header(buf, pos)
            if tag == _SEQ_END:
                return pos, pos + 8
            if tag != _ITEM:
                raise NeedsPydicom("not an item")
            if length == _UNDEFINED:
                _elements, pos = self._elements(buf, pos + 8, None)
            else:
                pos += 8 + length
            if pos <= start:
                raise NeedsPydicom("no progress")

    # -- rewriting --------------------------------------------------------------------------------

    def rewrite(self, value: bytes, ctx: ObjectContext, codec: str | None, clean_scope: bool, depth: int) -> bytes:
        """The sequence value with the rules applied (``value`` itself when nothing changed)."""
        items, _end = self._items(value, 0, len(value))
        return self._sequence(value, items, ctx, codec, clean_scope, depth) or value

    def _sequence(self, buf: bytes, items: list[list[_Element]], ctx: ObjectContext, codec: str | None,
                  clean_scope: bool, depth: int) -> bytes | None:
        """The rebuilt content (defined-length items), or None when no item changed."""
        if depth > MAX_DEPTH:
            raise NotApplicable("nesting-too-deep")
        rebuilt = [self._item(buf, elements, ctx, codec, clean_scope, depth) for elements in items]
        if all(r is None for r in rebuilt):
            return None
        parts = []
        for elements, new in zip(items, rebuilt, strict=True):
            content = new if new is not None else b"".join(buf[e.start:e.end] for e in elements)
            parts.append(_ITEM_HEADER + _U32.pack(len(content)) + content)
        return b"".join(parts)

    def _item(self, buf: bytes, elements: list[_Element], ctx: ObjectContext, codec: str | None,
              clean_scope: bool, depth: int) -> bytes | None:
        """One item's new content, or None when it is unchanged."""
        rules = self.rules
        for e in elements:
            if e.tag == 0x00080005:  # an item may declare its own character set
                names = buf[e.value_start:e.value_end].decode("ascii", "replace").strip(" \x00").split("\\")
                codecs = convert_encodings([n.strip() for n in names] or ["ISO_IR 6"])
                codec = codecs[0] if len(codecs) == 1 else None
        creators: dict[int, str] = {}
        for e in elements:
            if e.tag & 0x10000 and 0x10 <= e.tag & 0xFFFF <= 0xFF:
                creator = buf[e.value_start:e.value_end].decode("latin-1").strip(" \x00")
                if creator:
                    creators[e.tag] = normalise_creator(creator)
        parts: list[bytes | _Element] = []
        changed = False
        used_blocks: set[int] = set()
        for e in elements:
            tag = e.tag
            if tag & 0x10000:
                group, number = tag >> 16, tag & 0xFFFF
                if group <= 0x0007 or group == 0xFFFF or number < 0x0010:
                    changed = True
                    ctx.note_removed(tag)
                    continue
                if number <= 0x00FF:
                    parts.append(e)  # a creator: decided once its block is known
                    continue
                block = (group << 16) | (number >> 8)
                creator = creators.get(block)
                if creator is None or rules.block_removed(group, creator):
                    changed = True
                    ctx.note_removed(tag)
                    continue
                action = rules.private(tag, creator).action
                if action in ("remove", "clean"):
                    changed = True
                    ctx.note_removed(tag)
                    continue
                vr = e.vr or "UN"
                if action == "keep" and vr == "SQ":
                    out = self._sequence_element(buf, e, ctx, codec, clean_scope, depth)
                elif action == "keep" and kept_private_vr(e.vr, tag, creator, buf[e.value_start:e.value_end]):
                    out = None
                elif action == "keep" or (vr == "UN" and action != "empty"):
                    changed = True  # an OB/UN blob is never kept; without a known VR only empty is safe
                    ctx.note_removed(tag)
                    continue
                else:
                    out = self._value(buf, e, vr, action, None, ctx, codec)
                    if out is REMOVE:
                        changed = True
                        ctx.note_removed(tag)
                        continue
                used_blocks.add(block)
            else:
                if tag < 0x00030000:
                    changed = True
                    ctx.note_removed(tag)
                    continue
                d = rules.public(tag)
                action = d.action
                if action == "keep" and clean_scope and d.rule is None:
                    action = "clean"
                if action == "remove":
                    changed = True
                    ctx.note_removed(tag)
                    continue
                vr = e.vr if e.vr and e.vr != "UN" else (d.vr.split(" or ")[0] if d.vr else "UN")
                if e.vr == "UN" and d.vr and d.vr != "UN":
                    raise NeedsPydicom("UN value of a known attribute")
                if vr == "SQ" or (e.undefined and not e.vr):
                    if action in ("empty", "dummy"):
                        out = self._header(tag, "SQ", 0)
                    elif action in ("keep", "remap_uid", "shift_date", "clean"):
                        out = self._sequence_element(buf, e, ctx, codec, clean_scope or action == "clean", depth)
                    else:
                        raise NotApplicable("not-applicable-to-sequence")
                elif action == "keep":
                    out = None
                elif e.undefined:
                    raise NeedsPydicom("undefined-length value")
                else:
                    rule = d.rule.rule if d.rule else None
                    out = self._value(buf, e, vr, action, rule, ctx, codec)
                    if out is REMOVE:
                        changed = True
                        ctx.note_removed(tag)
                        continue
            if out is None:
                parts.append(buf[e.start:e.end])
            else:
                parts.append(out)  # type: ignore[arg-type]
                changed = True
        result: list[bytes] = []
        for p in parts:
            if isinstance(p, _Element):
                if p.tag in used_blocks:
                    result.append(buf[p.start:p.end])
                else:
                    changed = True
                    ctx.note_removed(p.tag)
            else:
                result.append(p)
        return b"".join(result) if changed else None

    def _sequence_element(self, buf: bytes, e: _Element, ctx: ObjectContext, codec: str | None, clean_scope: bool,
                          depth: int) -> bytes | None:
        items, _end = self._items(buf, e.value_start, None if e.undefined else e.value_end)
        content = self._sequence(buf, items, ctx, codec, clean_scope, depth + 1)
        if content is None:
            return None
        return self._header(e.tag, "SQ", len(content)) + content

    def _value(self, buf: bytes, e: _Element, vr: str, action: str, rule, ctx: ObjectContext,
               codec: str | None) -> bytes | object | None:
        """The re-encoded element, None when unchanged, or REMOVE."""
        old = buf[e.value_start:e.value_end]
        new = transform(old, vr, action, rule, ctx, self.uid, codec)
        if new is REMOVE:
            return REMOVE
        if new is old or new == old:
            return None
        assert isinstance(new, bytes)
        return self._header(e.tag, e.vr or vr, len(new)) + new

    def _header(self, tag: int, vr: str, length: int) -> bytes:
        head = _TAG.pack(tag >> 16, tag & 0xFFFF)
        if self.implicit:
            return head + _U32.pack(length)
        raw_vr = vr.encode("ascii")
        if raw_vr in _LONG_VRS:
            return head + raw_vr + b"\x00\x00" + _U32.pack(length)
        if length > 0xFFFF:
            raise NeedsPydicom("value too long for its VR")
        return head + raw_vr + _U16.pack(length)



_IMPLICIT_LE = b"1.2.840.10008.1.2"
_EXPLICIT_LE = b"1.2.840.10008.1.2.1"


def define_sequence_lengths(data: bytes) -> bytes:
    """``data`` with each top-level undefined-length sequence rewritten with a defined length.

    pydicom parses an undefined-length sequence eagerly while reading (a Dataset per item) and
    re-encodes it on writing, but keeps a defined-length one encoded. Giving the outer sequences a
    length (their items stay exactly as they are, undefined lengths included) lets the engine
    process them with :class:`SequenceRewriter` and copy what it keeps. The file means the same.
    Returns ``data`` itself when there is nothing to do or anything looks unusual.
    """
    if len(data) < 140 or data[128:132] != b"DICM" or not _may_have_undefined_sequences(data):
        return data
    try:
        pos = 132
        syntax = b""
        meta = SequenceRewriter(None, None, implicit=False)  # type: ignore[arg-type]
        while pos + 8 <= len(data) and _U16.unpack_from(data, pos)[0] == 0x0002:
            element = meta.element_at(data, pos)
            if element is None:
                return data
            if element.tag == 0x00020010:
                syntax = data[element.value_start:element.value_end].rstrip(b" \x00")
            pos = element.end
        if syntax not in (_IMPLICIT_LE, _EXPLICIT_LE) and not syntax.startswith(b"1.2.840.10008.1.2.4") \
                and syntax != b"1.2.840.10008.1.2.5":
            return data  # deflated, big endian or private: leave it to pydicom
        reader = SequenceRewriter(None, None, implicit=syntax == _IMPLICIT_LE)  # type: ignore[arg-type]
        parts: list[bytes] = [data[:pos]]
        changed = False
        while pos < len(data):
            element = reader.element_at(data, pos)
            if element is None:
                return data
            is_sequence = element.vr == "SQ" or (not element.vr and _implicit_sequence(element.tag))
            if element.undefined and is_sequence:
                content = data[element.value_start:element.value_end]
                parts.append(reader._header(element.tag, "SQ", len(content)) + content)
                changed = True
            else:
                parts.append(data[element.start:element.end])
            pos = element.end
    except (NeedsPydicom, struct.error):
        return data
    return b"".join(parts) if changed else data


def _may_have_undefined_sequences(data: bytes) -> bool:
    """A cheap filter before parsing: an undefined length (FFFFFFFF) somewhere before the pixel data,
    or after an explicit SQ/UN. A wrong guess only costs speed: the pre-pass is an optimisation."""
    pixel = data.find(b"\xe0\x7f\x10\x00")
    head = data if pixel < 0 else data[:pixel]
    if b"SQ\x00\x00\xff\xff\xff\xff" in head or b"UN\x00\x00\xff\xff\xff\xff" in head:
        return True
    explicit = b"1.2.840.10008.1.2.1\x00" in data[132:512] or b"1.2.840.10008.1.2.4" in data[132:512]
    return not explicit and b"\xff\xff\xff\xff" in head


def _implicit_sequence(tag: int) -> bool:
    if tag & 0x10000:
        return True  # a private element of undefined length in implicit VR is a sequence (PS3.5 7.5)
    try:
        return get_entry(tag)[0] == "SQ"
    except KeyError:
        return False
