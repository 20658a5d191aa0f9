"""The pieces other tools use: pre-commit hooks, the GitHub workflow, shell completion."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
from conftest import FIXTURES, ROOT, fv

EXAMPLE = ROOT / "examples" / "entry-stubs.S"


def test_pre_commit_hooks_run_as_pre_commit_would() -> None:
    text = (ROOT / ".pre-commit-hooks.yaml").read_text()
    hooks = re.findall(r"^- id: (\S+)$.*?^  entry: ([^\n]+)$.*?^  files: ([^\n]+)$", text,
                       re.M | re.S)
    assert [h[0] for h in hooks] == ["framevet", "framevet-user"]
    for _, entry, files in hooks:
        assert re.search(files, "arch/x86/entry/entry_64.S")
        argv = shlex.split(entry)
        assert argv[0] == "framevet"
        # pre-commit appends the staged file names to the entry
        r = fv(*argv[1:], str(EXAMPLE))
        assert r.returncode == 1 and "[caller-frame-write]" in r.stdout and r.stderr == ""
        clean = fv(*argv[1:], str(FIXTURES / "seeds" / "fred-frame-builder-fixed.S"))
        assert clean.returncode == 0


def test_the_documented_workflow_produces_valid_sarif(tmp_path: Path) -> None:
    flow = (ROOT / "examples" / "github-workflow.yml").read_text()
    assert "github/codeql-action/upload-sarif" in flow and "sarif_file: framevet.sarif" in flow
    cmd = re.search(r"framevet check (--format sarif[^\n]*)\\\n", flow)
    assert cmd
    args = shlex.split(cmd.group(1).replace("framevet.sarif", str(tmp_path / "f.sarif")))
    r = fv("check", *args, str(EXAMPLE))
    assert r.returncode == 1
    log = json.loads((tmp_path / "f.sarif").read_text())
    jsonschema.validate(log, json.loads((ROOT / "tests" / "data" /
                                         "sarif-schema-2.1.0.json").read_text()))
    assert (ROOT / "docs" / "ci.md").read_text().count("examples/github-workflow.yml") >= 1


def test_bash_completion_completes_commands_and_options() -> None:
    script = fv("completion", "bash").stdout
    probe = (f"{script}\nCOMP_WORDS=(framevet co); COMP_CWORD=1; _framevet; "
             "echo \"${COMPREPLY[@]}\"\nCOMP_WORDS=(framevet check --bas); COMP_CWORD=2; "
             "_framevet; echo \"${COMPREPLY[@]}\"\n")
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["config completion", "--baseline"]
    fish = fv("completion", "fish").stdout
    assert "complete -c framevet -n __fish_use_subcommand -a check" in fish
    assert sys.executable    # (the scripts call `framevet` from PATH, as users do)
