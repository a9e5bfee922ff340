"""Print pip's package sources as uv options: ``--index-url``, ``--extra-index-url``, ``--find-links`` and
``--constraint`` from ``pip config list`` (its files, then its ``PIP_*`` environment, which wins as in pip).

scripts/venv.sh installs with uv, which reads no pip configuration; without these options uv would ignore a
machine's local wheel folders and mirrors and could resolve other builds than pip does there.
Usage: ``mapfile -t sources < <(python scripts/pip_config_for_uv.py); uv pip install "${sources[@]}" ...`` (one
argument a line)."""

import subprocess
import sys

OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
           "constraint": "--constraint"}


def uv_options(config_list: str) -> list[str]:
    """uv options from the output of ``pip config list`` (lines ``<source>.<name>='<value>'``; a value may hold
    several whitespace-separated entries; an environment entry, ``:env:.<name>``, replaces the files')."""
    chosen: dict[str, tuple[bool, str]] = {}
    for line in config_list.splitlines():
        key, _, value = line.partition("=")
        source, _, name = key.rpartition(".")
        if name not in OPTIONS:
            continue
        from_env = source == ":env:"
        if from_env or not chosen.get(name, (False, ""))[0]:
            chosen[name] = (from_env, value.strip().strip("'\""))
    return [part for name, (_, value) in chosen.items() for entry in value.split()
            for part in (OPTIONS[name], entry)]


if __name__ == "__main__":
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    print(*uv_options(listed.stdout if listed.returncode == 0 else ""), sep="\n")
