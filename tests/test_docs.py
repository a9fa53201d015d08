"""Docs stay true to the code: the CLI reference is the parsers' own help, the README's commands exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    from nfdseg.app.clidoc import render

    assert (ROOT / "docs/cli.md").read_text() == render(), "docs/cli.md is stale: python -m nfdseg.app.clidoc > docs/cli.md"


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    lines = (ROOT / "README.md").read_text().splitlines()
    blocks = re.findall(r"```bash\n(.*?)\n```", "\n".join(lines[:30]), re.S)
    assert len(blocks) >= 2
    assert "nfdseg pipeline" in blocks[0] and "pip install" in blocks[0]
    assert "pytest" in blocks[1]
    ci = (ROOT / ".ci/run").read_text()
    assert blocks[1].strip() in ci, ".ci/run must run the README's test command exactly"


def test_readme_commands_name_real_subcommands():
    from nfdseg.app.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    used = set(re.findall(r"\bnfdseg ([a-z]+)\b", (ROOT / "README.md").read_text()))
    assert used <= set(sub.choices) | {"pipeline"}, used - set(sub.choices)
