"""The virtualenv build (scripts/venv.sh): uv installs from the package sources pip is configured with."""

import runpy
import subprocess
import sys

from tests.conftest import REPO

uv_options = runpy.run_path(str(REPO / "scripts" / "pip_config_for_uv.py"))["uv_options"]


def test_pips_sources_become_uv_options_and_its_environment_wins_over_its_files():
    listed = ("global.cert='/etc/ssl/certs/ca.crt'\n"
              "global.extra-index-url='file:///opt/pypi/simple file:///opt/more/simple'\n"
              "global.find-links='/opt/wheels'\n"
              "global.constraint='/etc/pip/constraints.txt'\n"
              ":env:.find-links='/srv/wheels'\n"
              ":env:.default-timeout='180'\n"
              "user.index-url='https://mirror.example/simple'\n")
    assert uv_options(listed) == ["--extra-index-url", "file:///opt/pypi/simple", "--extra-index-url",
                                  "file:///opt/more/simple", "--find-links", "/srv/wheels",
                                  "--constraint", "/etc/pip/constraints.txt", "--index-url",
                                  "https://mirror.example/simple"]
    assert uv_options(":env:.find-links='/srv/wheels'\nglobal.find-links='/opt/wheels'\n") == \
        ["--find-links", "/srv/wheels"]  # the environment wins whichever line comes first
    assert uv_options("") == [] and uv_options("global.timeout='60'\n") == []


def test_the_script_prints_one_argument_a_line():
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "pip_config_for_uv.py")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) % 2 == 0 and all(flag.startswith("--") for flag in lines[::2])
