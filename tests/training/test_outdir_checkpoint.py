import pytest
import torch

from kubedistill.errors import OutputDirError
from kubedistill.training.checkpoint import load_checkpoint, periodic_checkpoints, save_checkpoint
from kubedistill.training.outdir import OutputLayout, prepare_output_dir
from kubedistill.utils import atomic_save


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"step": 1}, path)
    with pytest.raises(RuntimeError, match="simulated"):
        atomic_save({"step": 2, "bad": _Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_last_points_at_the_newest_and_old_ones_rotate(tmp_path):
    for step in (2, 4, 6, 8):
        save_checkpoint({"step": step}, tmp_path, step=step, keep=2)
    assert [p.name for p in periodic_checkpoints(tmp_path)] == ["step-00000006.pt", "step-00000008.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 8


def test_resume_on_an_empty_folder_starts_a_new_run(tmp_path):
    layout = OutputLayout(tmp_path / "run")
    assert prepare_output_dir(layout, overwrite=False, resume=True) is None
    assert layout.root.is_dir()


def test_resume_without_a_checkpoint_in_a_used_folder_is_refused(tmp_path):
    layout = OutputLayout(tmp_path)
    (tmp_path / "train.log").write_text("a run that never checkpointed")
    with pytest.raises(OutputDirError, match="nothing to resume"):
        prepare_output_dir(layout, overwrite=False, resume=True)
    assert (tmp_path / "train.log").read_text() == "a run that never checkpointed"


def test_out_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(OutputDirError, match="not a directory"):
        prepare_output_dir(OutputLayout(target), overwrite=True, resume=False)
