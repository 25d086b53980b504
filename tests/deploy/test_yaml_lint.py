"""Every YAML file under deploy/ passes yamllint with deploy/.yamllint.yaml."""

from __future__ import annotations

from yamllint import linter
from yamllint.config import YamlLintConfig

from tests.deploy.conftest import DEPLOY

CONFIG = YamlLintConfig(file=str(DEPLOY / ".yamllint.yaml"))


def yaml_files():
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_deploy_yaml_is_lint_clean():
    files = yaml_files()
    assert len(files) >= 15, [str(f) for f in files]
    problems = [
        f"{path.relative_to(DEPLOY)}:{p.line}:{p.column} {p.rule} {p.message}"
        for path in files
        for p in linter.run(path.read_text(), CONFIG, str(path))
    ]
    assert not problems, "\n".join(problems)


def test_lint_rules_catch_a_duplicate_key():
    text = "data:\n  DFD_GROUP_ID: a\n  DFD_GROUP_ID: b\n"
    rules = {p.rule for p in linter.run(text, CONFIG)}
    assert "key-duplicates" in rules
