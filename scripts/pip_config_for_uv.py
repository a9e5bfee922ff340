"""Print pip's package sources as uv options: ``--index-url``, ``--extra-index-url``, ``--find-links`` and
``--constraint`` from ``pip config list`` (its files, then its ``PIP_*`` environment, with pip's precedence).

scripts/venv.sh installs with uv, which reads no pip configuration; without these options uv would ignore a
machine's local wheel folders and mirrors and could resolve other builds than pip does there.
Usage: ``mapfile -t sources < <(python scripts/pip_config_for_uv.py); uv pip install "${sources[@]}" ...`` (one
argument a line)."""

import subprocess
import sys

OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
           "constraint": "--constraint"}


def uv_options(config_list: str) -> list[str]:
    """uv options from the output of ``pip config list``: one line a key, ``<section>.<name>='<value>'``, sorted,
    with pip's files already merged (a later file's value replaces an earlier one's); a value may hold several
    whitespace-separated entries. As in pip's ``install``, its section's entry (``install.``, listed after
    ``global.``) replaces the ``global`` one, and the environment's (``:env:.``) replaces both."""
    from_files: dict[str, str] = {}
    from_env: dict[str, str] = {}
    for line in config_list.splitlines():
        key, _, value = line.partition("=")
        source, _, name = key.rpartition(".")
        if name in OPTIONS:
            (from_env if source == ":env:" else from_files)[name] = value.strip().strip("'\"")
    return [part for name, value in {**from_files, **from_env}.items() for entry in value.split()
            for part in (OPTIONS[name], entry)]


if __name__ == "__main__":
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    print(*uv_options(listed.stdout if listed.returncode == 0 else ""), sep="\n")
