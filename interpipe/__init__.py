"""interpipe: reproducible interpretability and compression experiments on transformer LMs.

The library does the work and knows nothing of Hydra or DVC: every entry point takes plain
arguments (paths, dataclasses, numbers) and returns plain results. The Hydra apps under
``stages/`` and the DVC pipeline in ``dvc.yaml`` are thin layers on top.
"""

__version__ = "0.1.0"
