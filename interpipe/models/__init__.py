"""Models: the toy GPT-2 trained here, the embedded MiniLM, hub and local models.

Task evaluation of a model folder (loss, accuracy, logit difference per task) lives in
:mod:`interpipe.models.evaluate` and is imported from there: it reads the task data, which
loading a model does not need.
"""

from interpipe.models.card import ModelCard, describe
from interpipe.settings.models import MODEL_KINDS
from interpipe.models.loading import (LoadedModel, load_model, load_pretrained, minilm_folder,
                                      resolve_source, save_model_folder)

__all__ = ["MODEL_KINDS", "ModelCard", "describe", "LoadedModel", "load_model", "load_pretrained",
           "minilm_folder", "resolve_source", "save_model_folder"]
