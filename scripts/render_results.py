#!/usr/bin/env python
"""Regenerate the README's results blocks from docs/results/ (``--check``: exit 1 when the README differs).

    python scripts/render_results.py           # rewrite README.md's <!-- results: ... --> blocks
    python scripts/render_results.py --check   # what CI runs: the README must match the committed results,
                                               # and every committed CSV the JSON written beside it
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resnet_jax.reporting import readme_results, results  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a block differs")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    try:
        if args.check:
            stale = readme_results.differing_blocks(text, args.results)
            for block in stale:
                print(f"{args.readme}: block {block} differs from {args.results}; run scripts/render_results.py",
                      file=sys.stderr)
            mismatched = results.form_mismatches(args.results)
            for line in mismatched:
                print(line, file=sys.stderr)
            return 1 if stale or mismatched else 0
        fresh = readme_results.render(text, args.results)
    except readme_results.ResultsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if fresh != text:
        args.readme.write_text(fresh)
    print(f"{args.readme}: {len(readme_results.BLOCK.findall(fresh))} results blocks rendered from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
