from kubedistill.training.allocator import tune_glibc_malloc


def test_tuning_applies_on_glibc_and_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("KUBEDISTILL_MALLOC_TUNING", "0")
    assert tune_glibc_malloc() is False
    monkeypatch.delenv("KUBEDISTILL_MALLOC_TUNING")
    assert tune_glibc_malloc() is True  # this project's machines run glibc (Debian)
