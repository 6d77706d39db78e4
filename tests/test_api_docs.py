"""docs/api.md's examples run as written, in order (a broken example fails here, not for a user)."""
import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


@pytest.fixture(autouse=True)
def one_thread():
    """Token-by-token work on tiny models: a second intra-op thread only adds synchronisation
    (and on a busy 2-core machine it costs 10-40x); restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_docs_api_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{DOC}:python-block-{i}", "exec"), namespace)
    assert (tmp_path / "generated.wav").is_file() and (tmp_path / "predictions.tsv").is_file()
