"""Circuit analysis on TransformerLens's ``TransformerBridge``: which heads and MLPs carry a task.

Direct logit attribution and the logit lens (:mod:`.dla`), batched activation patching
(:mod:`.engine`, :mod:`.patching`), attribution patching (:mod:`.attribution_patching`), path patching
(:mod:`.paths`), IOI head classes with OV copy scores (:mod:`.copying`) and S-inhibition path
patching (:mod:`.inhibition`, put together in :mod:`.head_classes`), ablations (:mod:`.ablation`), circuit scoring with intervals and random baselines
(:mod:`.scoring`), circuit discovery, CPR / CMD and overlap beside chance (:mod:`.discovery`), the headline and
reuse tables (:mod:`.tables`), figures (:mod:`.figures`), edge circuits (EAP, EAP-IG, exact edge patching, MIB's
CPR / CMD: :mod:`.edges`) and the whole study as one call (:mod:`.study`).
References: Wang et al. 2022 (IOI), Merullo et al. 2024 (circuit component reuse), Lieberum et
al. 2023 (Chinchilla), Nanda 2023 (attribution patching), Mueller et al. 2025 (MIB: CPR, CMD).
"""

from interpipe.circuits.ablation import Component, ablate, ablate_heads, ablate_mlps, ablate_neurons
from interpipe.circuits.attribution_patching import attribution_patch, correlation
from interpipe.circuits.copying import copy_scores
from interpipe.circuits.bridge import PromptBatch, batch_from_task, check_head, check_hook, load_bridge, make_batch
from interpipe.circuits.discovery import (Circuit, circuit_containment, circuit_overlap, faithfulness_curve, rank_components,
                                          select_circuit)
from interpipe.circuits.dla import direct_logit_attribution, logit_lens
from interpipe.circuits.engine import Patch, capture, run_variants
from interpipe.circuits.metrics import NormalizedLogitDiff, accuracy, kl_divergence, logit_diff
from interpipe.circuits.inhibition import s_inhibition_patch
from interpipe.circuits.paths import path_patch
from interpipe.circuits.patching import (activation_patch, patch_attn_out, patch_head_out_all_pos,
                                         patch_head_out_by_pos, patch_head_pattern_all_pos, patch_head_pattern_by_pos,
                                         patch_head_qkv_all_pos, patch_head_qkv_by_pos, patch_mlp_out, patch_resid_pre,
                                         task_metric)
from interpipe.circuits.results import CircuitResult
from interpipe.circuits.scoring import Scorer, random_circuits, score_heldout, smallest_above
from interpipe.circuits.study import run_circuits
from interpipe.settings.circuits import CircuitSettings

__all__ = [
    "Component", "ablate", "ablate_heads", "ablate_mlps", "ablate_neurons", "attribution_patch", "correlation",
    "PromptBatch", "batch_from_task", "check_head", "check_hook", "load_bridge", "make_batch", "Circuit",
    "circuit_containment", "circuit_overlap", "faithfulness_curve", "rank_components", "select_circuit", "direct_logit_attribution",
    "logit_lens", "Patch", "capture", "run_variants", "NormalizedLogitDiff", "accuracy", "kl_divergence",
    "logit_diff", "path_patch", "activation_patch", "patch_attn_out", "patch_head_out_all_pos",
    "patch_head_out_by_pos", "patch_head_pattern_all_pos", "patch_head_pattern_by_pos", "patch_head_qkv_all_pos",
    "patch_head_qkv_by_pos", "patch_mlp_out", "patch_resid_pre", "task_metric", "CircuitResult", "CircuitSettings",
    "run_circuits", "Scorer", "random_circuits", "score_heldout", "smallest_above", "copy_scores", "s_inhibition_patch",
]
