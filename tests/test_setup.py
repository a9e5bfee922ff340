"""The virtualenv build (scripts/venv.sh): uv installs from the package sources pip is configured with."""

import os
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
    assert uv_options("global.index-url='https://a.example'\ninstall.index-url='https://b.example'\n") == \
        ["--index-url", "https://b.example"]  # the install section over the global one, as for `pip install`
    assert uv_options("") == [] and uv_options("global.timeout='60'\n") == []


def test_the_script_reads_pips_own_configuration_and_prints_one_argument_a_line():
    """Through pip itself: no configuration file (``PIP_CONFIG_FILE`` set to the null device), two folders of
    wheels and an index in the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS="/srv/a /srv/b", PIP_INDEX_URL="https://mirror.example/simple")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "pip_config_for_uv.py")], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sorted(zip(lines[::2], lines[1::2])) == [("--find-links", "/srv/a"), ("--find-links", "/srv/b"),
                                                    ("--index-url", "https://mirror.example/simple")], lines
