"""The release tier's shared fixture: one `packaging/build.sh` per session, used by
test_release.py (the tarball) and test_deb.py (the .deb beside it)."""
import pytest

from release_helpers import build


@pytest.fixture(scope="session")
def dist(tmp_path_factory):
    """Build once (the roots and the venv stay cached): the tarball's path; the .deb is beside it."""
    outdir = tmp_path_factory.mktemp("dist")
    path, proc = build(outdir)
    print(proc.stderr)
    return path
