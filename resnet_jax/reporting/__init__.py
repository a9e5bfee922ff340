"""Reports, figures and committed results: a run's Markdown report, the main job's HTML report, the results
folders under ``docs/results/`` and the blocks that the README and the documentation pages render from them.

    python scripts/render_results.py --check     # every results block of README.md and docs/ matches docs/results/
"""

__all__ = ["benchmark_results", "factor_results", "figures", "markdown", "preset_times", "published", "readme_results", "recipe_results",
           "results", "results_figures", "skip_report", "skip_verdict", "study_report"]
