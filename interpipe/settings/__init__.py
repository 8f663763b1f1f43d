"""The settings of every study: small modules of dataclasses and their allowed values, nothing else.

The config schema (``stages/schema.py``) imports every one of them, so each is part of every
stage's import closure and a dependency of every DVC stage. They import no study code: changing a
study's implementation then re-runs only the stages that run it. The study packages import their
settings and allowed values from here.
"""
