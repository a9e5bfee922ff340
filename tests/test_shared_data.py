"""The suite's shared-data helper: a workstation without ``../shared/data`` skips the tests that need it, but a
CI run (``CI=true``) fails, so it cannot pass without its end-to-end runs."""

import pytest

from tests import conftest


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_missing_shared_data_skips_outside_ci(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="not present"):
        conftest.shared_dataset("no-such-dataset")


@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_missing_shared_data_fails_under_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(BaseException) as caught:  # a skip raised here must fail this test, not skip it
        conftest.shared_dataset("no-such-dataset")
    assert caught.type is pytest.fail.Exception, f"{caught.type.__name__}: {caught.value}"
    assert caught.match("no-such-dataset not present.*CI=true requires it")


def test_present_shared_data_is_its_folder_under_ci(monkeypatch, tmp_path):
    (tmp_path / "cifar10").mkdir()
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    monkeypatch.setenv("CI", "true")
    assert conftest.shared_dataset("cifar10") == tmp_path / "cifar10"
