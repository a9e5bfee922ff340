#!/usr/bin/env python
"""Regenerate the results blocks of README.md and the docs pages from docs/results/ (``--check``: exit 1 when one differs).

    python scripts/render_results.py           # rewrite every <!-- results: ... --> block of README.md and docs/**/*.md
    python scripts/render_results.py --check   # what CI runs: every page must match the committed results,
                                               # and every committed CSV the JSON written beside it
    python scripts/render_results.py PAGE...   # only these files

It also draws the documentation's figures from the same results into docs/figures/ (SVG, byte for byte the same
from the same results); ``--check`` draws them again and compares.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resnet_jax.reporting import readme_results, results, results_figures  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", type=Path,
                        help="files whose blocks to render (default: README.md and every docs page that has blocks)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a block differs")
    parser.add_argument("--readme", type=Path, help="one file only (the same as naming it as the only page)")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--figures", type=Path,
                        help="where the figures drawn from the results go (SVG; --check compares their bytes); "
                             "default docs/figures, drawn only from the default --results")
    args = parser.parse_args(argv)
    if args.figures is None and args.results.resolve() == (ROOT / "docs" / "results").resolve():
        args.figures = ROOT / results_figures.FIGURE_DIR  # other results folders carry no figures of their own
    pages = args.pages + ([args.readme] if args.readme else []) or readme_results.pages(ROOT)
    try:
        if args.check:
            stale = [(page, block) for page in pages
                     for block in readme_results.differing_blocks(page.read_text(), args.results)]
            for page, block in stale:
                print(f"{page}: block {block} differs from {args.results}; run scripts/render_results.py",
                      file=sys.stderr)
            mismatched = results.form_mismatches(args.results)
            for line in mismatched:
                print(line, file=sys.stderr)
            drawn = results_figures.differing(args.results, args.figures) if args.figures else []
            for name in drawn:
                print(f"{args.figures / name}.svg differs from what {args.results} draws (edited by hand, or the "
                      f"results changed); run scripts/render_results.py", file=sys.stderr)
            return 1 if stale or mismatched or drawn else 0
        fresh = {page: readme_results.render(page.read_text(), args.results) for page in pages}
    except readme_results.ResultsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for page, text in fresh.items():
        if text != page.read_text():
            page.write_text(text)
        print(f"{page}: {len(readme_results.BLOCK.findall(text))} results blocks rendered from {args.results}")
    if args.figures:
        figures = results_figures.write(args.results, args.figures)
        print(f"{args.figures}: {len(figures)} figures drawn from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
