"""The parity check as a CI job: JUnit XML in the common testsuite/testcase/failure shape (and failing on a broken
model), the Markdown summary, all-or-nothing report files, and the workflow of `attn-export ci-template`: it parses as
YAML, each attn-export command in it parses with the CLI, and the CPU job's steps run green on a zoo model here (and
red on a broken one)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import onnx
import pytest

from attn_export import defaults
from attn_export.ci import WorkflowOptions, validate_invocation, write_workflow
from attn_export.cli import main
from attn_export.errors import AttnExportError

from helpers import SMALL, assert_one_line_error, run

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def yaml():
    return pytest.importorskip("yaml", reason="pyyaml (the dev extra) parses the workflow")


def junit_shape(path: Path) -> ET.Element:
    """The JUnit schema's shape (Ant / Jenkins / GitHub reporters): testsuites > testsuite > testcase > failure |
    skipped | system-out, with the required attributes and consistent counts. Returns the root."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    total = {"tests": 0, "failures": 0, "skipped": 0}
    for suite in root:
        assert suite.tag == "testsuite"
        assert {"name", "tests", "failures", "errors", "skipped", "time", "timestamp", "hostname"} <= set(suite.attrib)
        cases = [c for c in suite if c.tag == "testcase"]
        assert all(c.tag in ("testcase", "properties") for c in suite), [c.tag for c in suite]
        assert int(suite.get("tests")) == len(cases) > 0
        failures = [c for c in cases if c.find("failure") is not None]
        skipped = [c for c in cases if c.find("skipped") is not None]
        assert int(suite.get("failures")) == len(failures) and int(suite.get("skipped")) == len(skipped)
        for case in cases:
            assert case.get("name") and case.get("classname") and float(case.get("time")) >= 0
            for child in case:
                assert child.tag in ("failure", "skipped", "system-out")
                if child.tag == "failure":
                    assert child.get("message") and child.get("type") and child.text
        for key in total:
            total[key] += int(suite.get(key))
        # the suite's time is its cases' (each the runners' inference time on its input set)
        assert float(suite.get("time")) == pytest.approx(sum(float(c.get("time")) for c in cases), abs=1e-3)
    assert {key: int(root.get(key)) for key in total} == total
    return root


def judged_cases_are_timed(root: ET.Element) -> None:
    """Every judged case carries its inference time: never the placeholder "0"."""
    judged = [c for c in root.iter("testcase") if c.find("skipped") is None]
    assert judged and all(float(c.get("time")) > 0 for c in judged), [c.get("time") for c in judged]


def break_weights(source: Path, target: Path) -> None:
    proto = onnx.load(source)
    weight = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[::7] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(proto, target)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("ci") / "out"
    result = run(SMALL, "-o", out, "--junit", out / "junit.xml", "--summary", out / "summary.md")
    assert result.exit_code == 0, result.output
    return out


def test_export_writes_junit_with_one_case_per_output_and_input_set(exported):
    root = junit_shape(exported / "junit.xml")
    cases = root.findall("./testsuite/testcase")
    report = json.loads((exported / "report.json").read_text())
    assert len(cases) == sum(len(c["outputs"]) for c in report["comparisons"]) == 3  # batch + 1, length + 32
    assert [c.get("name") for c in cases] == [f"output [{c['input_shapes']}]" for c in report["comparisons"]]
    assert cases[1].get("name") == "output [tokens=2x128]"
    assert root.find("./testsuite").get("name") == "parity: pytorch-cpu vs onnxruntime-cpu"
    assert root.get("failures") == "0"
    judged_cases_are_timed(root)
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["model"] == SMALL and props["precision"] == "fp32" and "version.onnxruntime" in props


def test_summary_markdown(exported):
    text = (exported / "summary.md").read_text()
    assert text.startswith("## attn-export parity: PASS")
    assert "| pytorch-cpu vs onnxruntime-cpu | tokens=2x128 | output |" in text
    assert "atol 0.0001, rtol 0.0001" in text


def test_check_junit_fails_on_a_broken_model(exported, tmp_path):
    break_weights(exported / "model.onnx", tmp_path / "broken.onnx")
    result = run("check", SMALL, tmp_path / "broken.onnx", "--junit", tmp_path / "junit.xml", "--summary",
                 tmp_path / "summary.md")
    assert result.exit_code == 1, result.output
    root = junit_shape(tmp_path / "junit.xml")
    failures = root.findall(".//failure")
    assert len(failures) == 3 and root.get("failures") == "3"
    message = failures[0].get("message")
    assert re.fullmatch(r"max abs err \S+ > atol 0\.0001 where max rel err \S+ > rtol 0\.0001", message), message
    assert "mean |ref|" in failures[0].text
    assert (tmp_path / "summary.md").read_text().startswith("## attn-export parity: FAIL")


def test_quantized_check_writes_cosine_cases_and_informational_skips(tmp_path):
    out = tmp_path / "out"
    result = run(SMALL, "-o", out, "--int8", "--calib-samples", "4", "--junit", out / "junit.xml")
    assert result.exit_code == 0, result.output
    root = junit_shape(out / "junit.xml")
    suites = [s.get("name") for s in root.findall("testsuite")]
    assert suites == ["parity: pytorch-cpu vs onnxruntime-cpu", "int8 parity: pytorch-cpu vs onnxruntime-int8",
                      "int8 parity: pytorch-cpu vs onnxruntime-int8-fused", "int8 parity: null control"]
    assert all(c.find("skipped") is not None for c in root.findall("testsuite")[2].findall("testcase"))  # info rows
    assert "cosine" in root.findall("testsuite")[1].find("testcase/system-out").text
    names = [c.get("name") for c in root.findall("testsuite")[1].findall("testcase")]
    assert names[-1] == "output [every sample]"  # the worst sample, named
    (control,) = root.findall("testsuite")[3].findall("testcase")
    assert control.find("failure") is None and "null control" in control.find("system-out").text
    judged_cases_are_timed(root)


def test_report_files_are_all_or_nothing(tmp_path):
    """A run that fails after the export leaves no JUnit, summary or Triton entry, and old ones untouched."""
    out = tmp_path / "out"
    for name, text in (("junit.xml", "old junit"), ("summary.md", "old summary")):
        (tmp_path / name).write_text(text)
    np.savez(tmp_path / "bad.npz", tokens=np.zeros((1, 64, 3), np.int64))  # rank the model does not take
    result = run(SMALL, "-o", out, "--inputs", tmp_path / "bad.npz", "--junit", tmp_path / "junit.xml",
                 "--summary", tmp_path / "summary.md", "--triton-repo", tmp_path / "triton")
    assert result.exit_code == 2
    assert (tmp_path / "junit.xml").read_text() == "old junit"
    assert (tmp_path / "summary.md").read_text() == "old summary"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "junit.xml", "summary.md"]
    check = run("check", SMALL, tmp_path / "missing.onnx", "--junit", tmp_path / "junit.xml")
    assert check.exit_code == 2 and (tmp_path / "junit.xml").read_text() == "old junit"


def test_report_paths_that_are_folders(tmp_path):
    (tmp_path / "dir").mkdir()
    assert_one_line_error(run(SMALL, "-o", tmp_path / "o", "--junit", tmp_path / "dir"), 2,
                          "--junit " + str(tmp_path / "dir") + " is a folder")
    assert_one_line_error(run("check", SMALL, tmp_path / "m.onnx", "--summary", tmp_path / "dir"), 2, "is a folder")
    assert_one_line_error(run(SMALL, "-o", tmp_path / "o", "--junit", tmp_path / "j.xml", "--no-check"), 2,
                          "--junit reports the parity check: drop --no-check")
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------- the workflow


def attn_export_commands(run_block: str) -> list[list[str]]:
    joined = run_block.replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.strip().startswith("attn-export ")]


def test_validate_invocation_uses_the_cli_parser():
    assert validate_invocation(["attn-export", "check", SMALL, "m.onnx", "--junit", "j.xml"], main) == ["check"]
    assert validate_invocation(["attn-export", SMALL, "-o", "out", "--dtype", "fp16"], main) == ["export"]
    assert validate_invocation(["attn-export", "plugins", "build", "--arch", "native"], main) == ["plugins", "build"]
    for bad, fragment in ((["attn-export", "check"], "Missing argument 'MODEL'"),
                          (["attn-export", "check", SMALL, "m.onnx", "--jnuit", "x"], "No such option"),
                          (["attn-export", "bench", "out", "--iters", "many"], "not a valid integer"),
                          (["attn-export", "plugins", "rebuild"], "No such command")):
        with pytest.raises(AttnExportError, match=fragment):
            validate_invocation(bad, main)


def test_the_workflow_is_validated_by_the_cli_it_is_given(tmp_path):
    """attn_export.ci never imports the CLI (that would be a cycle): the parser is handed in, or is the running
    command's (ci-template's); outside a CLI invocation and without one, nothing is written."""
    opts = WorkflowOptions(install=("./wheel.whl",))
    with pytest.raises(ValueError, match="pass the CLI's click command"):
        write_workflow(tmp_path / "wf.yml", opts)
    assert not (tmp_path / "wf.yml").exists()
    with pytest.raises(AttnExportError, match="is not a valid invocation"):
        write_workflow(tmp_path / "wf.yml", WorkflowOptions(install=opts.install, model_args=["--no-such-flag"]),
                       command=main)
    assert not (tmp_path / "wf.yml").exists()
    assert "attn-export check" in write_workflow(tmp_path / "wf.yml", opts, command=main).read_text()


@pytest.mark.parametrize("gpu", [False, True])
def test_workflow_parses_and_every_command_is_a_valid_invocation(tmp_path, gpu, yaml):
    path = tmp_path / ".github" / "workflows" / "parity.yml"
    result = run("ci-template", "-o", path, *INSTALL, *(["--gpu"] if gpu else []))
    assert result.exit_code == 0, result.output
    workflow = yaml.safe_load(path.read_text())
    jobs = workflow["jobs"]
    assert set(jobs) == ({"parity-cpu", "parity-tensorrt"} if gpu else {"parity-cpu"})
    assert set(workflow[True]) >= {"push", "pull_request"}  # YAML 1.1 reads the key `on` as True
    commands = [cmd for job in jobs.values() for step in job["steps"] if "run" in step
                for cmd in attn_export_commands(step["run"])]
    assert len(commands) == (5 if gpu else 1)
    for argv in commands:
        validate_invocation(argv, main)
    if gpu:
        job = jobs["parity-tensorrt"]
        assert "self-hosted" in job["runs-on"] and job["needs"] == "parity-cpu"
        # the CPU job exports; the GPU job builds the engine and checks it against the saved reference, no model
        assert [c[1:3] for c in commands[1:]] == [["zoo:nat-tiny", "-o"], ["plugins", "build"],
                                                  ["engine", "export/model.onnx"], ["check", "--reference"]]
        assert "--engine" in commands[4] and "zoo:nat-tiny" not in commands[4]
        download = next(s for s in job["steps"] if "download-artifact" in s.get("uses", ""))
        assert download["with"]["name"] == "parity-export"


# attn-export is on no package index: the workflow installs it from the user's repository (a committed wheel).
WHEEL = "./wheels/attn_export-0.1.0-py3-none-any.whl"
INSTALL = ("--install", WHEEL, "--install=-e .")


def test_ci_template_needs_to_be_told_where_attn_export_comes_from(tmp_path, yaml):
    path = tmp_path / "parity.yml"
    assert_one_line_error(run("ci-template", "-o", path), 2, "ci-template needs --install: attn-export is on no "
                          "package index")
    assert not path.exists()
    assert run("ci-template", "-o", path, "--gpu", *INSTALL).exit_code == 0
    jobs = yaml.safe_load(path.read_text())["jobs"]
    for job in jobs.values():  # torch first (pinned), then exactly what --install named
        install = next(step["run"] for step in job["steps"] if step.get("id") == "install")
        torch_line, requirements = (shlex.split(line) for line in install.splitlines()[:2])
        assert torch_line[torch_line.index("install") + 1] == "torch==2.13.0"
        assert requirements[requirements.index("install") + 1:][:2] == [WHEEL, "-e ."]
    assert "attn-export==" not in path.read_text()  # no index serves it


def test_ci_template_bad_paths(tmp_path):
    (tmp_path / "wf.yml").write_text("mine")
    assert_one_line_error(run("ci-template", "-o", tmp_path / "wf.yml", *INSTALL), 2, "exists; pass --force")
    assert (tmp_path / "wf.yml").read_text() == "mine"
    assert run("ci-template", "-o", tmp_path / "wf.yml", "--force", *INSTALL).exit_code == 0
    assert "attn-export check" in (tmp_path / "wf.yml").read_text()
    assert_one_line_error(run("ci-template", "-o", tmp_path, *INSTALL), 2, "is a folder")
    assert_one_line_error(run("ci-template", "-o", tmp_path / "x.yml", *INSTALL, "--input-shape", "images=axb"), 2,
                          "--input-shape 'images=axb' is not NAME=DIMS")
    assert not (tmp_path / "x.yml").exists()


def run_cpu_job(workflow: dict, cwd: Path) -> list[tuple[str, int]]:
    """Run the CPU job's `run` steps in ``cwd`` as GitHub would (bash -e, $GITHUB_STEP_SUMMARY), except the
    install step (this environment is the installed one); a failed step skips the rest unless `if: always()`."""
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(cwd / "step-summary.md"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    outcomes, failed = [], False
    for step in workflow["jobs"]["parity-cpu"]["steps"]:
        if "run" not in step or step.get("id") == "install" or (failed and step.get("if") != "always()"):
            continue
        proc = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=600)
        outcomes.append((step["name"], proc.returncode))
        failed = failed or proc.returncode != 0
    return outcomes


def test_cpu_job_runs_green_on_a_zoo_model_and_red_on_a_broken_one(tmp_path, yaml):
    repo = tmp_path / "repo"
    repo.mkdir()
    assert run(SMALL, "-o", tmp_path / "export", "--no-check").exit_code == 0
    (repo / "model.onnx").write_bytes((tmp_path / "export" / "model.onnx").read_bytes())  # the committed file
    assert run("ci-template", "--model", SMALL, "-o", repo / ".github/workflows/parity.yml", *INSTALL).exit_code == 0
    workflow = yaml.safe_load((repo / ".github/workflows/parity.yml").read_text())
    outcomes = run_cpu_job(workflow, repo)
    assert outcomes and all(code == 0 for _, code in outcomes), outcomes
    upload = next(s for s in workflow["jobs"]["parity-cpu"]["steps"] if "upload-artifact" in s.get("uses", ""))
    uploaded = repo / upload["with"]["path"]
    assert {p.name for p in uploaded.iterdir()} == {"report.json", "junit.xml", "summary.md"}
    assert junit_shape(uploaded / "junit.xml").get("failures") == "0"
    assert (repo / "step-summary.md").read_text().startswith("## attn-export parity: PASS")

    break_weights(repo / "model.onnx", repo / "model.onnx")  # the model changed, the committed file did not
    (repo / "step-summary.md").unlink()
    outcomes = dict(run_cpu_job(workflow, repo))
    assert outcomes["Check the committed ONNX against the model"] == 1
    assert outcomes["Job summary"] == 0  # if: always(): the failure is still summarized
    assert int(junit_shape(uploaded / "junit.xml").get("failures")) > 0
    assert (repo / "step-summary.md").read_text().startswith("## attn-export parity: FAIL")


def test_a_failure_after_the_reports_were_staged_leaves_none_of_them(tmp_path, monkeypatch):
    """The Triton entry fails after the JUnit and summary files were staged: all are discarded, old ones kept."""
    from attn_export import triton

    def broken(*args, **kwargs):
        raise AttnExportError("disk full while writing the Triton entry")

    monkeypatch.setattr(triton, "write_entry", broken)
    (tmp_path / "junit.xml").write_text("old junit")
    result = run(SMALL, "-o", tmp_path / "out", "--junit", tmp_path / "junit.xml", "--summary",
                 tmp_path / "reports" / "summary.md", "--triton-repo", tmp_path / "repo")
    assert_one_line_error(result, 2, "disk full while writing the Triton entry")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml"]  # no out/, reports/, repo/ or staging
    assert (tmp_path / "junit.xml").read_text() == "old junit"


def test_extras_commit_whole_folders_and_discard_what_they_created(tmp_path):
    from attn_export.outdir import Extras

    (tmp_path / "repo" / "model").mkdir(parents=True)
    (tmp_path / "repo" / "model" / "stale.txt").write_text("old")
    extras = Extras()
    folder = extras.path(tmp_path / "repo" / "model", folder=True)
    (folder / "config.pbtxt").write_text("new")
    extras.path(tmp_path / "a" / "b" / "report.md").write_text("report")
    assert not (tmp_path / "a" / "b" / "report.md").exists()  # nothing in place before the commit
    extras.commit()
    assert sorted(p.name for p in (tmp_path / "repo" / "model").iterdir()) == ["config.pbtxt"]
    assert (tmp_path / "a" / "b" / "report.md").read_text() == "report"
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["model"]
    (tmp_path / "plain").mkdir()  # what lands gets a plain mkdir's permissions, not mkdtemp's private 0700
    assert (tmp_path / "repo" / "model").stat().st_mode == (tmp_path / "plain").stat().st_mode
    (tmp_path / "plain").rmdir()

    extras = Extras()
    extras.path(tmp_path / "new" / "deep" / "junit.xml").write_text("x")
    extras.path(tmp_path / "repo" / "other", folder=True)
    extras.discard()
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["model"]


# --------------------------------------------------------------------------------------- README and .ci/run


def readme_block(after: str) -> list[str]:
    """The lines of the README's first ```bash block after the paragraph starting with ``after``."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(after):].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_readme_and_ci_run_install_and_test_with_the_same_lines():
    readme = readme_block("Run the tests.")
    script = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
              if line.strip().startswith(("pip ", "ruff ", "python -m pytest"))]
    assert script == readme, (script, readme)
    assert readme[0] == f"pip install {defaults.CI_TORCH}"  # torch first, pinned as the workflow template pins it
    assert readme_block("attn-export needs PyTorch first")[0] == readme[0]  # the quick start installs it alike


def test_gpu_variant_cpu_job_leaves_what_the_gpu_job_checks_without_the_model(tmp_path, yaml):
    repo = tmp_path / "repo"
    repo.mkdir()
    assert run(SMALL, "-o", tmp_path / "first", "--no-check").exit_code == 0
    (repo / "model.onnx").write_bytes((tmp_path / "first" / "model.onnx").read_bytes())
    path = repo / ".github/workflows/parity.yml"
    assert run("ci-template", "--model", SMALL, "--gpu", "-o", path, *INSTALL).exit_code == 0
    workflow = yaml.safe_load(path.read_text())
    outcomes = run_cpu_job(workflow, repo)
    assert outcomes and all(code == 0 for _, code in outcomes), outcomes
    steps = workflow["jobs"]["parity-cpu"]["steps"]
    upload = next(s for s in steps if s.get("with", {}).get("name") == "parity-export")
    export = repo / upload["with"]["path"]
    assert {"model.onnx", "reference.npz"} <= {p.name for p in export.iterdir()}
    # the GPU job's check, minus the engine (no TensorRT here): the saved reference judges the file, no model loaded
    result = run("check", "--reference", export / "reference.npz", export / "model.onnx", cwd=repo)
    assert result.exit_code == 0, result.output
    break_weights(export / "model.onnx", export / "model.onnx")
    assert run("check", "--reference", export / "reference.npz", export / "model.onnx", cwd=repo).exit_code == 1
