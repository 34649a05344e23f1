"""yamllint over every YAML file in docker/ and k8s/; warnings fail too."""

from __future__ import annotations

from pathlib import Path

import pytest
from yamllint import linter
from yamllint.config import YamlLintConfig

from tests.deploy.manifests import COMPOSE_FILE, K8S_YAML_FILES, relative

# yamllint's defaults, with the project's line length; Kubernetes files start with a comment
# rather than `---`.
CONFIG = YamlLintConfig(
    """
extends: default
rules:
  line-length:
    max: 100
  document-start: disable
"""
)


@pytest.mark.parametrize("path", [COMPOSE_FILE, *K8S_YAML_FILES], ids=relative)
def test_yaml_file_passes_yamllint(path: Path) -> None:
    problems = [
        f"{problem.line}:{problem.column} {problem.level} {problem.message} ({problem.rule})"
        for problem in linter.run(path.read_text(), CONFIG, str(path))
    ]
    assert problems == []


def test_yamllint_reports_a_problem() -> None:
    assert list(linter.run("key: value   \nkey: again\n", CONFIG))
