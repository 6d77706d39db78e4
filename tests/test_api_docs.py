"""docs/api.md's examples run as written, in order (a broken example fails here, not for a user)."""
import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_docs_api_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{DOC}:python-block-{i}", "exec"), namespace)
    assert (tmp_path / "generated.wav").is_file() and (tmp_path / "predictions.tsv").is_file()
