"""The release tier's shared fixture: one `packaging/build.sh` per session (the tarball, the
.deb beside it), used by test_release.py and test_deb.py; test_rpm.py and test_image.py get
the same build through release_helpers.release_tarball."""
import pytest

from release_helpers import release_tarball


@pytest.fixture(scope="session")
def dist(tmp_path_factory):
    """Build once (the roots and the venv stay cached): the tarball's path; the .deb is beside it."""
    return release_tarball(tmp_path_factory)
