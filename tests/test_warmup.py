"""SequenceLengthWarmup in real Trainer.fit runs on the bundled E. coli genome, including resume."""
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from longseq.datamodules import GenomeDataModule, SequenceLengthWarmup

STAGES = [{"seq_len": 64, "batch_size": 4, "epochs": 1},
          {"seq_len": 128, "batch_size": 2, "epochs": 2},
          {"seq_len": 256, "batch_size": 1, "epochs": 1}]
# (seq_len, batch_size) trained in each epoch; after the last stage the run stays in it
EXPECTED = {0: (64, 4), 1: (128, 2), 2: (128, 2), 3: (256, 1), 4: (256, 1)}


@pytest.fixture(autouse=True, scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LONGSEQ_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


class Recorder(pl.LightningModule):
    """A tiny next-base model that records the shape of every batch it sees."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(8, 8)
        self.head = torch.nn.Linear(8, 8)
        self.seen = []

    def _loss(self, batch):
        logits = self.head(self.embed(batch["input_ids"]))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())

    def training_step(self, batch, idx):
        self.seen.append(("train", self.current_epoch, tuple(batch["input_ids"].shape)[::-1]))
        return self._loss(batch)

    def validation_step(self, batch, idx):
        phase = "sanity" if self.trainer.sanity_checking else "val"
        self.seen.append((phase, self.current_epoch, tuple(batch["input_ids"].shape)[::-1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(tmp_path, max_epochs, callbacks=(), **kwargs):
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_train_batches=2,
                      limit_val_batches=1, reload_dataloaders_every_n_epochs=1, default_root_dir=tmp_path,
                      callbacks=[SequenceLengthWarmup(STAGES), *callbacks], **kwargs)


def data():
    return GenomeDataModule(seq_len=32, batch_size=8, samples_per_epoch=64)


def by_epoch(seen, phase):
    out = {}
    for p, epoch, shape in seen:
        if p == phase:
            assert out.setdefault(epoch, shape) == shape, (phase, epoch, seen)
    return out


def test_seq_len_changes_across_epochs_and_resume_lands_in_the_right_stage(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    model, dm = Recorder(), data()
    trainer(tmp_path, 5, [ckpt]).fit(model, datamodule=dm)
    assert by_epoch(model.seen, "train") == EXPECTED
    assert by_epoch(model.seen, "val") == EXPECTED                 # validation follows the stage
    assert by_epoch(model.seen, "sanity") == {0: EXPECTED[0]}
    assert (dm.seq_len, dm.batch_size) == EXPECTED[4]

    # Resume from checkpoints written at the end of an epoch, one just before a stage change (2) and
    # one at the end of the first stage (0): later epochs continue where the schedule says, not from
    # the first stage, the checkpoint's stage, or what the data module was built with.
    for done in (0, 2):
        resumed = Recorder()
        trainer(tmp_path, 5).fit(resumed, datamodule=data(), ckpt_path=tmp_path / "ckpt" / f"epoch={done}.ckpt")
        assert by_epoch(resumed.seen, "train") == {e: EXPECTED[e] for e in range(done + 1, 5)}
        assert by_epoch(resumed.seen, "val") == {e: EXPECTED[e] for e in range(done + 1, 5)}


def test_resume_mid_epoch(tmp_path):
    # Two batches per epoch: step 3 is the first batch of epoch 1. Resuming there finishes epoch 1
    # at epoch 1's length before moving on.
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", save_top_k=-1, every_n_train_steps=3)
    trainer(tmp_path, 2, [ckpt], num_sanity_val_steps=0).fit(Recorder(), datamodule=data())
    resumed = Recorder()
    trainer(tmp_path, 4, num_sanity_val_steps=0).fit(resumed, datamodule=data(),
                                                     ckpt_path=tmp_path / "ckpt" / "step=3.ckpt")
    assert by_epoch(resumed.seen, "train") == {e: EXPECTED[e] for e in (1, 2, 3)}
    assert [e for p, e, _ in resumed.seen if p == "train"] == [1, 2, 2, 3, 3]


def test_requires_reloading_dataloaders(tmp_path):
    t = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                   callbacks=[SequenceLengthWarmup(STAGES)], default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs=1"):
        t.fit(Recorder(), datamodule=data())


def test_stage_schedule_and_bad_stages():
    warmup = SequenceLengthWarmup(STAGES)
    assert [(s["seq_len"], s["batch_size"]) for s in map(warmup.stage_for_epoch, range(5))] == list(EXPECTED.values())
    with pytest.raises(ValueError, match="non-empty list"):
        SequenceLengthWarmup([])
    with pytest.raises(ValueError, match=r"stages\[1\] must have exactly the keys"):
        SequenceLengthWarmup([STAGES[0], {"seq_len": 8, "epochs": 1}])
    with pytest.raises(ValueError, match=r"stages\[0\]\['epochs'\] must be a positive integer"):
        SequenceLengthWarmup([{"seq_len": 8, "batch_size": 1, "epochs": 0}])
