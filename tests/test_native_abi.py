"""The ctypes copies of the C ABI in attn_export.native (the parameter structs, the dtype and path enums, the ABI
version) against plugins/kernels/attnx_types.h as the host compiler lays it out: a program generated from the
header's own struct and enum definitions prints sizeof, every field's offset and size and every enumerator, and
each ctypes struct must match field by field (name, order, offset, size, element type). A hand copy that drifts
from the header would pass garbage to the kernels without any error; here it fails the native tier. The check is
also run against deliberately wrong copies, to show that it can fail."""

from __future__ import annotations

import ctypes
import re
import subprocess

import pytest

from attn_export import native

from native_tools import PLUGINS, compile_program

pytestmark = pytest.mark.native

HEADER = PLUGINS / "kernels" / "attnx_types.h"
STRUCTS = [native.NAParamsStruct, native.LayoutStruct, native.BSAParamsStruct, native.ParoParamsStruct]
C_TYPES = {ctypes.c_int32: "int32_t", ctypes.c_float: "float"}


def header_structs(text: str) -> dict[str, list[tuple[str, str]]]:
    """{struct: [(field, declared type), ...]} from the header's `typedef struct NAME { ... } NAME;` blocks."""
    structs = {}
    for name, body in re.findall(r"typedef struct (\w+) \{(.*?)\} \1;", text, flags=re.S):
        fields = []
        body = re.sub(r"//[^\n]*", "", body)
        for statement in filter(None, (s.strip() for s in body.split(";"))):
            ctype, names = statement.split(None, 1)
            for declarator in names.split(","):
                match = re.fullmatch(r"\s*(\w+)\s*(\[\s*\w+\s*\])?\s*", declarator)
                assert match, f"{HEADER.name}: cannot read the declaration '{statement}' of {name}"
                fields.append((match.group(1), ctype + ("[]" if match.group(2) else "")))
        structs[name] = fields
    return structs


def header_enumerators(text: str) -> list[str]:
    return re.findall(r"\b(ATTNX_\w+)\s*=\s*\d+", text)


def compiled_layout(tmp_path) -> dict:
    """What the host compiler makes of the header: {"sizeof": {struct: n}, "fields": {struct: [(field, offset,
    size, type)]}, "values": {name: int}} (enumerators and ATTNX_ABI_VERSION)."""
    text = HEADER.read_text()
    structs = header_structs(text)
    lines = ["#include <cstddef>", "#include <cstdio>", '#include "attnx_types.h"', "int main() {"]
    for struct, fields in structs.items():
        lines.append(f'    std::printf("S {struct} %zu\\n", sizeof({struct}));')
        for field, ctype in fields:
            lines.append(f'    std::printf("F {struct} {field} %zu %zu {ctype}\\n", offsetof({struct}, {field}), '
                         f"sizeof({struct}::{field}));")
    for value in [*header_enumerators(text), "ATTNX_ABI_VERSION"]:
        lines.append(f'    std::printf("V {value} %d\\n", static_cast<int>({value}));')
    source = tmp_path / "abi_dump.cpp"
    source.write_text("\n".join([*lines, "    return 0;", "}", ""]))
    exe = compile_program([source], tmp_path / "abi_dump")
    layout = {"sizeof": {}, "fields": {s: [] for s in structs}, "values": {}}
    for row in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines():
        kind, *rest = row.split()
        if kind == "S":
            layout["sizeof"][rest[0]] = int(rest[1])
        elif kind == "F":
            struct, field, offset, size, ctype = rest
            layout["fields"][struct].append((field, int(offset), int(size), ctype))
        else:
            layout["values"][rest[0]] = int(rest[1])
    return layout


def ctype_name(ctype) -> str:
    if isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
        return ctype_name(ctype._type_) + "[]"
    if isinstance(ctype, type) and issubclass(ctype, ctypes.Structure):
        return ctype._c_name_
    return C_TYPES.get(ctype, ctype.__name__)


def struct_problems(cls, layout: dict) -> list[str]:
    """Where a ctypes struct differs from the compiled header (empty when it matches)."""
    name = cls._c_name_
    if name not in layout["sizeof"]:
        return [f"{cls.__name__}: attnx_types.h has no struct {name}"]
    problems = []
    if ctypes.sizeof(cls) != layout["sizeof"][name]:
        problems.append(f"{cls.__name__}: sizeof {ctypes.sizeof(cls)}, {name} has {layout['sizeof'][name]}")
    ours = [(f, getattr(cls, f).offset, getattr(cls, f).size, ctype_name(t)) for f, t in cls._fields_]
    theirs = layout["fields"][name]
    if [f[0] for f in ours] != [f[0] for f in theirs]:
        problems.append(f"{cls.__name__}: fields {[f[0] for f in ours]}, {name} has {[f[0] for f in theirs]}")
    for mine, header in zip(ours, theirs, strict=False):
        if mine != header and mine[0] == header[0]:
            problems.append(f"{cls.__name__}.{mine[0]}: (offset, size, type) {mine[1:]}, {name} has {header[1:]}")
    return problems


def value_problems(layout: dict) -> list[str]:
    """The Python copies of the enums and the ABI version against the header's values."""
    values = layout["values"]
    want = {f"ATTNX_{dtype.upper()}": code for dtype, code in native._DTYPES.items()}
    want |= {f"ATTNX_PATH_{path.upper().replace('-', '_')}": code for code, path in native.PATHS.items()}
    want["ATTNX_ABI_VERSION"] = native.NativeKernels.ABI_VERSION
    problems = [f"{key}: Python says {code}, attnx_types.h {values.get(key, 'nothing')}"
                for key, code in want.items() if values.get(key) != code]
    paths = {key for key in values if key.startswith("ATTNX_PATH_")}
    problems += [f"{key}: attnx_types.h has it, native.PATHS does not" for key in sorted(paths - set(want))]
    return problems


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return compiled_layout(tmp_path_factory.mktemp("abi"))


def test_the_header_is_read_whole(layout):
    """Every struct the binding mirrors is in the header, and its fields (as read) cover its size exactly: a
    declaration the reader missed would leave a gap."""
    assert {cls._c_name_ for cls in STRUCTS} <= set(layout["sizeof"])
    for struct, fields in layout["fields"].items():
        end = 0
        for field, offset, size, _ in fields:
            assert offset == end, f"{struct}.{field} at {offset}, the fields before it end at {end}"
            end = offset + size
        assert end == layout["sizeof"][struct], f"{struct}: fields end at {end}, sizeof {layout['sizeof'][struct]}"


@pytest.mark.parametrize("cls", STRUCTS, ids=lambda c: c._c_name_)
def test_ctypes_struct_matches_the_header(cls, layout):
    assert struct_problems(cls, layout) == []


def test_enums_and_abi_version_match_the_header(layout):
    assert value_problems(layout) == []


def wrong_copy(cls, fields):
    return type(cls.__name__, (ctypes.Structure,), {"_c_name_": cls._c_name_, "_fields_": fields})


def test_the_check_fails_on_deliberately_wrong_copies(layout, monkeypatch):
    fields = list(native.ParoParamsStruct._fields_)
    swapped = fields[:]
    swapped[6], swapped[7] = swapped[7], swapped[6]  # qk_bits <-> pv_bits
    retyped = [(n, ctypes.c_int32 if n == "scale" else t) for n, t in fields]
    shorter = [(n, t) for n, t in native.NAParamsStruct._fields_ if n != "has_rpb"]
    wide = [(n, ctypes.c_int64 if n == "max_blocks" else t) for n, t in native.LayoutStruct._fields_]
    assert any("fields" in p for p in struct_problems(wrong_copy(native.ParoParamsStruct, swapped), layout))
    assert any("ParoParamsStruct.scale" in p and "float" in p
               for p in struct_problems(wrong_copy(native.ParoParamsStruct, retyped), layout))
    assert any("sizeof" in p for p in struct_problems(wrong_copy(native.NAParamsStruct, shorter), layout))
    problems = struct_problems(wrong_copy(native.LayoutStruct, wide), layout)
    assert any("max_blocks" in p for p in problems) and any("count_batch" in p for p in problems), problems
    monkeypatch.setattr(native, "PATHS", {0: "none", 1: "generic", 3: "core"})
    assert any("ATTNX_PATH_GENERIC" in p for p in value_problems(layout))
