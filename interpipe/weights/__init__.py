"""Weight-level studies: Talking Heads composition, bigram subnetworks, LayerNorm removal.

- :mod:`interpipe.weights.composition` / :mod:`interpipe.weights.talking_heads` (prompts and
  hooked forwards in :mod:`interpipe.weights.laundry`) — Merullo et al. 2024 (arXiv 2406.09519);
- :mod:`interpipe.weights.bigram_subnetwork` — Chang & Bergen 2025 (arXiv 2504.15471);
- :mod:`interpipe.weights.lnfree` (fake norms, schedule, recipe, evaluation) —
  Baroni et al. 2025 (arXiv 2507.02559).

``run_weights(settings, model_folder, data_root, out_dir)`` runs the study named by
``settings.study`` and writes its result into ``out_dir``.
"""

from interpipe.settings.weights import (STUDIES, BigramSettings, LNFreeSettings, TalkingHeadsSettings,
                                        WeightsSettings)

__all__ = ["STUDIES", "BigramSettings", "LNFreeSettings", "TalkingHeadsSettings", "WeightsSettings", "run_weights"]


def run_weights(settings: WeightsSettings, model_folder, data_root, out_dir, checkpoint_dir=None,
                seed: int = 0, device: str = "cpu", dtype: str = "float32", info: dict | None = None) -> dict:
    """Run ``settings.study`` on the model folder; write tables, figures (and models) into
    ``out_dir``; return the flat metrics. ``checkpoint_dir`` keeps training checkpoints between
    interrupted runs (removed after success). ``info`` (the run record: model origin, seed, config
    hash, revision) is added to the result's ``info``."""
    from pathlib import Path

    from interpipe.models import load_model
    from interpipe.weights.common import architecture

    out_dir = Path(out_dir)
    loaded = load_model(model_folder, device=device, dtype=dtype)
    architecture(loaded.model, settings.study)  # refuse undescribed / non-causal families, naming the model_type
    if loaded.card.kind != "causal_lm":
        raise ValueError(f"the weight-level studies need a causal LM; {loaded.card.name} is a {loaded.card.kind}")
    if settings.study == "talking_heads":
        from interpipe.weights.talking_heads import run_talking_heads

        result = run_talking_heads(loaded, model_folder, data_root, settings.talking_heads, seed=seed,
                                   batch_size=settings.batch_size, out_dir=out_dir)
    elif settings.study == "bigram":
        from interpipe.weights.bigram_subnetwork import run_bigram

        result = run_bigram(loaded, data_root, settings.bigram, seed=seed, batch_size=settings.batch_size,
                            out_dir=out_dir, checkpoint_dir=checkpoint_dir)
    else:
        from interpipe.weights.lnfree import run_lnfree

        result = run_lnfree(loaded, model_folder, data_root, settings.lnfree, seed=seed,
                            batch_size=settings.batch_size, out_dir=out_dir, checkpoint_dir=checkpoint_dir)
    result.info = {**result.info, **(info or {})}  # the run record's model (name, source, revision) wins
    result.save(out_dir, overwrite=True)
    return {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str, bool))}
