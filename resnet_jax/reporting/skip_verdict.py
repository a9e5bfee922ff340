"""Study B's answer in plain sentences: does activation-chosen depth save compute at equal accuracy, beside early
exit and random depth. Written from the stored operating points alone, so a study and the README's results blocks
say it in the same words.

Usage: ``skip_verdict.verdict(results["curves"])`` (also public as :func:`resnet_jax.studies.skip.verdict`).
"""

from __future__ import annotations

from collections.abc import Mapping

from resnet_jax.ablation import speed, statistics


MATCHED = "random depth matched to the dense router (its histogram at the router's point: the control its verdict reads)"


def table_points(curves: Mapping) -> list[dict]:
    """Every method at its operating point (``curves["best"]``) and, after the dense router, the control its
    verdict is compared with: random depth with the router's own histogram at the router's point, under its own
    name (random depth's own operating point may be another histogram)."""
    rows = list(curves["best"])
    router = next((i for i, p in enumerate(rows) if p["method"] == "dense_router"), None)
    if router is None:
        return rows
    setting = f"as {rows[router]['setting']}"
    matched = next((p for p in curves["test"] if p["method"] == "random" and p["setting"] == setting), None)
    own = next((p for p in rows if p["method"] == "random"), None)
    if matched is None or (own is not None and own["setting"] == setting):
        return rows
    return [*rows[:router + 1], {**matched, "method": "random_matched", "label": MATCHED}, *rows[router + 1:]]


def verdict(curves: Mapping) -> list[str]:
    """Plain sentences: does activation-chosen depth save compute at equal accuracy, and how does early exit do?

    "Equal accuracy" is the validation rule that chose the point (within the tolerance of CNN-1) *and* a test
    accuracy no lower than CNN-1's by more than the tolerance; "saves" needs at least 2 % fewer MACs. Wall
    time is reported beside (faster or slower only where its interval excludes 1: :func:`wall_time`), and the
    dense router beside random depth of its own histogram.

    Example:
        >>> from resnet_jax.studies.skip import verdict
        >>> def point(method, label, accuracy, mac_ratio, setting=""):
        ...     return {"method": method, "label": label, "setting": setting, "accuracy": accuracy,
        ...             "ci_low": accuracy - 0.01, "ci_high": accuracy + 0.01, "mac_ratio_vs_cnn1": mac_ratio,
        ...             "meets_validation_target": True}
        >>> curves = {"tolerance": 0.005, "test": [], "best": [
        ...     point("full", "CNN-1", 0.98, 1.0), point("early_exit", "early exit", 0.978, 0.6, "threshold 0.9")]}
        >>> print(verdict(curves)[0])
        early exit, at the point chosen on validation (threshold 0.9): test accuracy 0.9780 [0.9680, 0.9880] vs
        CNN-1 0.9800 [0.9700, 0.9900] (-0.0020), MAC ratio 0.600, wall-time ratio -. At a test accuracy within 0.005
        of CNN-1's it saves 40.0% of the MACs; wall time not compared (no interval recorded by the version that made
        this run).
    """
    best, tol = {p["method"]: p for p in curves["best"]}, curves["tolerance"]
    full, lines = best["full"], []
    random = {p["setting"]: p for p in curves["test"] if p["method"] == "random"}
    for method in ("dense_router", "selection_router", "early_exit"):
        p = best.get(method)
        if not p:
            continue
        gap = p["accuracy"] - full["accuracy"]
        paired = f"paired difference {statistics.comparison_text(p['vs_cnn1'])}" if "vs_cnn1" in p else f"{gap:+.4f}"
        text = (f"{p['label']}, at the point chosen on validation ({p['setting']}): test accuracy "
                f"{p['accuracy']:.4f} [{p['ci_low']:.4f}, {p['ci_high']:.4f}] vs CNN-1 {full['accuracy']:.4f} "
                f"[{full['ci_low']:.4f}, {full['ci_high']:.4f}] ({paired}), MAC ratio {p['mac_ratio_vs_cnn1']:.3f}, "
                f"wall-time ratio {wall_ratio_text(p)}")
        shuffled = random.get(f"as {p['setting']}") if method == "dense_router" else None
        if shuffled:
            added = (statistics.comparison_text(p["vs_random"]) if "vs_random" in p
                     else f"{p['accuracy'] - shuffled['accuracy']:+.4f}")
            text += (f"; random depth with the same histogram {shuffled['accuracy']:.4f}, so the activation-chosen "
                     f"depths add {added}")
        if not p["meets_validation_target"]:
            lines.append(f"{text}. No operating point reaches CNN-1's validation accuracy: it does not save compute "
                         f"at equal accuracy.")
        elif gap < -tol:
            lines.append(f"{text}. On test it falls {-gap:.4f} below CNN-1 (more than {tol}): no saving at equal "
                         f"accuracy is shown.")
        elif p["mac_ratio_vs_cnn1"] > 0.98:
            lines.append(f"{text}. {_at_accuracy(p, gap, tol)} it saves no compute (under 2 % of the MACs).")
        else:
            lines.append(f"{text}. {_at_accuracy(p, gap, tol)} it saves {1 - p['mac_ratio_vs_cnn1']:.1%} of the MACs; "
                         f"{wall_time(p)}.")
    return lines


def wall_time(point: Mapping) -> str:
    """The point's wall time against CNN-1's in words: faster or slower only where the interval of its wall ratio
    excludes 1; a point timed by an earlier version (a median of a few runs, no interval) is not compared."""
    return speed.sentence(point.get("wall_ratio_interval"), "wall time")


def wall_ratio_text(point: Mapping) -> str:
    """``'0.892 [0.851, 0.934]'``; a ratio with no interval says so; ``'-'`` where the point was not timed."""
    if "wall_ratio_vs_cnn1" not in point:
        return "-"
    interval = point.get("wall_ratio_interval") or {}
    return (speed.interval_text(interval) if interval.get("low") is not None
            else f"{point['wall_ratio_vs_cnn1']:.3f} (no interval)")


def verdict_lines(res: Mapping) -> list[str]:
    """A stored run's verdict as today's code words it (its numbers are the run's), after CNN-1's stored competence
    warning, as the study puts it; a run too old to hold its chosen points keeps its stored sentences."""
    if "best" not in res.get("curves", {}):
        return list(res.get("verdict", []))
    return ([f"WARNING: {res['warning']}"] if "warning" in res else []) + verdict(res["curves"])


def _at_accuracy(point: Mapping, gap: float, tol: float) -> str:
    """The accuracy a saving comes at, as the point's paired test against CNN-1 reads it ("equal" only where no
    paired test ran: then the tolerance rule is all there is)."""
    said = point.get("vs_cnn1", {}).get("verdict")
    if said in ("worse", "better"):
        return f"At {abs(gap):.4f} {'below' if said == 'worse' else 'above'} CNN-1's test accuracy (paired: {said})"
    if said:
        return "At a test accuracy not distinguishable from CNN-1's (paired)"
    return f"At a test accuracy within {tol} of CNN-1's"
