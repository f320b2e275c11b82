"""Where a source checkout's `import codetr` takes its native files from (python/codetr/_lib): the
CMake build tree, never the source tree. The installed package is checked by tools/check_install.sh
(a real `pip install .`)."""
import os
import subprocess
import sys
from pathlib import Path

import codetr
from codetr import _C, _lib

REPO = Path(__file__).resolve().parents[1]


def test_checkout_loads_the_native_files_from_the_build_tree():
    assert _lib.IN_SOURCE_CHECKOUT
    folder = _lib.build_dir() / "python" / "codetr" / "_lib"
    assert Path(_lib.__path__[0]) == folder
    assert Path(codetr._native.runtime.__file__).parent == folder
    # The op library is the one beside libcodetr.so (the runtime's one rule).
    assert Path(_C.library_path()) == folder / "libcodetr_ops.so"
    assert _lib.executable("codetr-detect") == folder / "codetr-detect"


def test_no_native_file_in_the_source_tree():
    # Only the package's own __init__.py (and Python's caches) live in python/codetr/_lib; a
    # leftover library there would be shipped by pip install . beside the freshly built ones.
    stray = [p.name for p in (REPO / "python" / "codetr" / "_lib").iterdir()
             if p.name not in ("__init__.py", "__pycache__")]
    assert stray == [], f"remove {stray} from python/codetr/_lib (built files live in the build tree)"


def test_a_missing_build_names_the_folder_and_the_build_command(tmp_path):
    env = dict(os.environ, CODETR_BUILD_DIR=str(tmp_path / "no-build"))
    proc = subprocess.run([sys.executable, "-c", "import codetr"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert str(tmp_path / "no-build" / "python" / "codetr" / "_lib") in proc.stderr
    assert "tools/build.sh" in proc.stderr
