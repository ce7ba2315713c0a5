"""The op contract, driven by the registry (attn_export.registry.OPS): every layer that repeats an op's names
agrees with its one entry. For each op: the ONNX schema, docs/architecture.md's registry table and
docs/ops/<torch_name>.md (its layer table, Inputs table and Attributes table); for each op with a plugin
folder, the C++ declaration that the plugin's parsing, serialization and creator all read (name, version,
namespace, field table), compiled and printed by plugins/tests/plugin_decl_dump.cpp. Every check is also
run once against a deliberately wrong copy, to show that it can fail."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from onnx import AttributeProto
from onnx.defs import OpSchema

from attn_export.onnx_ops import schema
from attn_export.registry import OPS, PLUGIN_ATTRIBUTES, OpSpec

from native_tools import PLUGINS, compile_program, config_header, plugin_folders

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SPECS = list(OPS.values())
PLUGIN_SPECS = [spec for spec in SPECS if spec.plugin]


def spec_id(spec: OpSpec) -> str:
    return spec.key


# ---- C++: the plugin's declaration ----

def dump_declaration(folder: Path, tmp_path: Path) -> dict:
    """The declaration in folder's *Config.h (namespace attnx::plugin::<folder>), as the compiled dump prints it."""
    exe = compile_program([PLUGINS / "tests" / "plugin_decl_dump.cpp"], tmp_path / f"dump_{folder.name}",
                          defines=(f'PLUGIN_HEADER="{config_header(folder).name}"', f"PLUGIN_FOLDER={folder.name}"),
                          include_dirs=(folder,))
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines()
    _, name, version, namespace = out[0].split()
    fields = [dict(zip(("name", "type", "count", "required"), line.split()[1:], strict=True)) for line in out[1:]]
    return {"name": name, "version": version, "namespace": namespace, "fields": fields}


def declaration_problems(spec: OpSpec, decl: dict) -> list[str]:
    """Where the C++ declaration disagrees with the registry entry (empty when they agree)."""
    where = f"plugins/trt/{spec.plugin}"
    problems = [f"{where}: plugin {key} is {decl[key]!r}, the registry says {want!r}"
                for key, want in (("name", spec.plugin_name), ("version", spec.plugin_version),
                                  ("namespace", spec.plugin_namespace)) if decl[key] != want]
    names = [f["name"] for f in decl["fields"]]
    want_names = [a.name for a in spec.attributes]
    if names != want_names:
        problems.append(f"{where}: fields {names}, the registry's attributes are {want_names}")
    for field, attribute in zip(decl["fields"], spec.attributes, strict=False):
        if field["name"] != attribute.name:
            continue
        if field["type"] != attribute.field_type:
            problems.append(f"{where}: field {attribute.name} is {field['type']}, the registry says "
                            f"{attribute.field_type} ({attribute.onnx_type})")
        if field["count"] != attribute.count:
            problems.append(f"{where}: field {attribute.name} count is {field['count']}, the registry says "
                            f"{attribute.count}")
        # The plugin may default what the ONNX node must carry (e.g. scale: serialization omits an absent
        # one), but must never require what a valid node may omit.
        if field["required"] == "1" and not attribute.required:
            problems.append(f"{where}: field {attribute.name} is required by the plugin but optional in the registry")
    return problems


def test_every_plugin_folder_belongs_to_an_op():
    claimed = {spec.plugin for spec in PLUGIN_SPECS}
    folders = {folder.name for folder in plugin_folders()}
    assert folders <= claimed, f"plugin folders no registry op names: {sorted(folders - claimed)}"
    assert claimed <= folders, f"registry ops name missing plugin folders: {sorted(claimed - folders)}"


@pytest.mark.parametrize("spec", PLUGIN_SPECS, ids=spec_id)
def test_plugin_declaration_matches_registry(spec, tmp_path):
    decl = dump_declaration(PLUGINS / "trt" / spec.plugin, tmp_path)
    assert declaration_problems(spec, decl) == []


def test_declaration_check_fails_on_a_wrong_field(tmp_path):
    """A copy of a plugin folder whose header has a field renamed and another retyped must disagree."""
    spec = PLUGIN_SPECS[0]
    source = PLUGINS / "trt" / spec.plugin
    copy = tmp_path / spec.plugin
    shutil.copytree(source, copy)
    header = config_header(copy)
    first, last = spec.attributes[0], spec.attributes[-1]
    text = header.read_text()
    wrong = re.sub(rf'\{{"{last.name}", FieldType::k\w+', f'{{"{last.name}", FieldType::kInt64', text)
    wrong = wrong.replace(f'"{first.name}"', f'"{first.name}_x"')
    assert f'"{first.name}_x"' in wrong and "FieldType::kInt64" in wrong  # the static_assert too
    header.write_text(wrong)
    problems = declaration_problems(spec, dump_declaration(copy, tmp_path))
    assert any(f"{first.name}_x" in p for p in problems), problems
    assert any(f"field {last.name} is int64" in p for p in problems), problems


# ---- ONNX schema ----

@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_onnx_schema_lists_the_registry(spec):
    s = schema(spec)
    optional = OpSchema.FormalParameterOption.Optional
    assert [(i.name, i.type_str, i.option == optional) for i in s.inputs] == [
        (i.name, i.type_var, i.optional) for i in spec.inputs]
    assert [(o.name, o.type_str) for o in s.outputs] == [(o.name, o.type_var) for o in spec.outputs]
    want = {a.name: (getattr(AttributeProto, a.onnx_type), a.required) for a in spec.attributes}
    want |= {name: (AttributeProto.STRING, False) for name in PLUGIN_ATTRIBUTES}
    assert {name: (a.type, a.required) for name, a in s.attributes.items()} == want
    assert (s.name, s.domain) == (spec.onnx_op_type, spec.plugin_namespace)


# ---- docs ----

def split_row(line: str) -> list[str]:
    """The cells of a markdown table row (an escaped \\| stays inside its cell), without backticks."""
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [cell.replace("\\|", "|").strip() for cell in cells]


def tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every table as (the last non-empty line before it, header cells, rows of cells)."""
    found, label, lines, at = [], "", text.splitlines(), 0
    while at < len(lines):
        line = lines[at]
        if line.startswith("|") and at + 1 < len(lines) and re.match(r"^\|[\s|:-]+\|$", lines[at + 1]):
            header, rows = split_row(line), []
            at += 2
            while at < len(lines) and lines[at].startswith("|"):
                rows.append(split_row(lines[at]))
                at += 1
            found.append((label, header, rows))
            continue
        if line.strip():
            label = line.strip()
        at += 1
    return found


def table_after(text: str, label: str) -> tuple[list[str], list[list[str]]]:
    matches = [(header, rows) for before, header, rows in tables(text) if before.startswith(label)]
    assert len(matches) == 1, f"expected one table right after a line starting with {label!r}, found {len(matches)}"
    return matches[0]


def plain(cell: str) -> str:
    return cell.replace("`", "").strip()


def op_doc_problems(spec: OpSpec, text: str) -> list[str]:
    """Where docs/ops/<torch_name>.md disagrees with the registry: the layer table's torch op, ONNX node and
    TensorRT plugin; the Inputs table (name, "(optional)", type); the Attributes table (name, ONNX type)."""
    problems = []
    layers = {plain(row[0]): row[1] for before, header, rows in tables(text)
              if [plain(h) for h in header] == ["layer", "name"] for row in rows}
    wants = {"torch custom op": [f"`{spec.torch_qualname}`"], "ONNX node": [f"`{spec.onnx_op_type}`"],
             "TensorRT plugin": [f"`{spec.plugin_name}`", f'`"{spec.plugin_version}"`', f'`"{spec.plugin_namespace}"`']}
    if spec.plugin:
        wants["TensorRT plugin"].append(f"plugins/trt/{spec.plugin}")
    for layer, needles in wants.items():
        missing = [n for n in needles if n not in layers.get(layer, "")]
        if missing:
            problems.append(f"layer table row {layer!r} lacks {missing}")

    header, rows = table_after(text, "Inputs")
    column = {plain(h): i for i, h in enumerate(header)}
    documented = [(plain(r[column["name"]]).replace("(optional)", "").strip(), "(optional)" in r[column["name"]],
                   plain(r[column["type"]])) for r in rows]
    registry = [(i.name, i.optional, i.type_var) for i in spec.inputs]
    if documented != registry:
        problems.append(f"Inputs table (name, optional, type) {documented}, the registry says {registry}")

    header, rows = table_after(text, "Attributes")
    column = {plain(h): i for i, h in enumerate(header)}
    documented = [(plain(r[column["name"]]), re.match(r"[A-Z]*", plain(r[column["type"]])).group()) for r in rows]
    registry = [(a.name, a.onnx_type) for a in spec.attributes] + [(n, "STRING") for n in PLUGIN_ATTRIBUTES]
    if documented != registry:
        problems.append(f"Attributes table (name, type) {documented}, the registry says {registry}")
    return problems


def op_doc(spec: OpSpec) -> Path:
    return DOCS / "ops" / f"{spec.torch_name}.md"


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_op_doc_tables_match_registry(spec):
    path = op_doc(spec)
    assert path.is_file(), f"every op has its contract page: {path.relative_to(REPO)} is missing"
    assert op_doc_problems(spec, path.read_text()) == [], path.relative_to(REPO)


def test_op_doc_check_fails_on_a_wrong_table():
    spec = SPECS[0]
    text = op_doc(spec).read_text()
    attribute, first_input = spec.attributes[0].name, spec.inputs[0].name
    renamed = text.replace(f"| {attribute} |", f"| {attribute}s |")
    assert renamed != text and any("Attributes table" in p for p in op_doc_problems(spec, renamed))
    retyped = re.sub(rf"^\| 0 \| {first_input} \| {spec.inputs[0].type_var} \|", f"| 0 | {first_input} | X |",
                     text, flags=re.M)
    assert retyped != text and any("Inputs table" in p for p in op_doc_problems(spec, retyped))
    dropped = "\n".join(line for line in text.splitlines() if not line.startswith(f"| {attribute} |"))
    assert op_doc_problems(spec, dropped)


def registry_rows() -> dict[str, list[str]]:
    text = (DOCS / "architecture.md").read_text()
    heads = ["op", "torch op", "ONNX node (domain attn_export)", "TensorRT plugin (name, version, namespace)"]
    matching = [rows for _, header, rows in tables(text) if [plain(h) for h in header] == heads]
    assert len(matching) == 1, "docs/architecture.md: expected one registry table with columns " + ", ".join(heads)
    return {plain(row[0]).lower(): row for row in matching[0]}  # "PARO" is the op "paro"


def registry_row_problems(spec: OpSpec, row: list[str] | None) -> list[str]:
    if row is None:
        return [f"no row for op {spec.key!r}"]
    _, torch_op, node, plugin = row
    problems = []
    if torch_op != f"`{spec.torch_qualname}`":
        problems.append(f"torch op {torch_op}, the registry says `{spec.torch_qualname}`")
    if node != f"`{spec.onnx_op_type}`":
        problems.append(f"ONNX node {node}, the registry says `{spec.onnx_op_type}`")
    expected = f'`{spec.plugin_name}`, "{spec.plugin_version}", "{spec.plugin_namespace}"'
    if not plugin.startswith(expected):
        problems.append(f"plugin {plugin}, the registry says {expected}")
    if ("(planned)" in plugin) != (spec.plugin is None):
        problems.append(f"plugin {plugin}: '(planned)' exactly when the registry has no plugin folder")
    return problems


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_architecture_registry_table_matches(spec):
    assert registry_row_problems(spec, registry_rows().get(spec.key.lower())) == []


def test_architecture_check_fails_on_a_wrong_row():
    spec = PLUGIN_SPECS[0] if PLUGIN_SPECS else SPECS[0]
    row = list(registry_rows()[spec.key.lower()])
    assert registry_row_problems(spec, row[:3] + [row[3] + " (planned)"])
    assert registry_row_problems(spec, row[:2] + ["`Other`", row[3]])
