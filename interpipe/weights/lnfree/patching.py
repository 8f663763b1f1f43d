"""Attribution patching's accuracy against exact activation patching, before and after norm removal.

Baroni et al. 2025 report that removing the norms does not make attribution patching (a first-order
estimate, :func:`interpipe.circuits.attribution_patching.attribution_patch`) more accurate: the
attention softmax and the MLP nonlinearities stay. Here, per model, the Pearson correlation between
the estimate and exact patching (:func:`interpipe.circuits.patching.activation_patch`) of each
head's output and each layer's MLP output (all positions at once), on the same clean/corrupted prompts.
"""

from __future__ import annotations

from pathlib import Path

GRIDS = (("z", ("layer", "head")), ("mlp_out", ("layer",)))  # every head's output; every MLP's


def patching_task(data_root, tasks: list[str]) -> str | None:
    """IOI if prepared, else the first evaluated task (the patching prompts come from it)."""
    prepared = [t for t in ("ioi", *tasks) if (Path(data_root) / t).exists()]
    return prepared[0] if prepared else None


def patching_accuracy(models, data_root, task: str, n_prompts: int):
    """Per ``(name, loaded, folder)``: correlation of attribution with exact patching for each grid.

    Returns ``(flat metrics, table)``; metrics ``attribution_patching_r_<activation>_<name>``.
    """
    import pandas as pd

    from interpipe.circuits.attribution_patching import attribution_patch, correlation
    from interpipe.circuits.bridge import batch_from_task
    from interpipe.circuits.patching import activation_patch, grid_name, result_axes
    from interpipe.weights.common import boot_bridge

    rows, metrics = [], {}
    for name, lm, folder in models:
        bridge = boot_bridge(lm.model, lm.tokenizer, folder)
        batch = batch_from_task(bridge, data_root, task, n_prompts, on_mismatch="skip")
        estimates = attribution_patch(bridge, batch, grids=GRIDS)
        for activation, axes in GRIDS:
            exact = activation_patch(bridge, batch, activation, axes)
            estimate = estimates[grid_name(activation, result_axes(bridge, activation, axes))]
            r = correlation(estimate, exact)
            error = float((estimate.effect() - exact.effect()).abs().mean())
            rows.append({"model": name, "task": task, "activation": activation, "pearson_r": r,
                         "mean_abs_error": error, "n_prompts": batch.size})
            metrics[f"attribution_patching_r_{activation}_{name}"] = r
        del bridge
    return metrics, pd.DataFrame(rows)
