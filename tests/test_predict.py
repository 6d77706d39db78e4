"""Per-window bits that the language-model tasks return from predict."""
import math

import torch
import torch.nn.functional as F

from longseq import MambaConfig, MambaLM
from longseq.tasks.next_base import window_bits


def test_window_bits_equal_per_window_cross_entropy():
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=8)).eval()
    ids = torch.randint(0, 5, (3, 21))
    labels = torch.randint(0, 5, (3, 21))
    labels[1, :7] = -100          # unscored positions do not count
    labels[2, :] = -100           # a window with nothing scored gives 0, not NaN
    batch = {"input_ids": ids, "labels": labels, "window_id": torch.tensor([5, 9, 11])}
    with torch.no_grad():
        out = window_bits(model, batch, "bits_per_base")
        logits = model(ids)
    assert out["window_id"].tolist() == [5, 9, 11]
    for i in range(3):
        keep = labels[i] != -100
        expected = (F.cross_entropy(logits[i][keep], labels[i][keep]).item() / math.log(2)
                    if keep.any() else 0.0)
        assert abs(out["bits_per_base"][i].item() - expected) < 1e-5
    assert "window_id" not in window_bits(model, {"input_ids": ids, "labels": labels}, "x")
