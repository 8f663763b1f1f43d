"""The runtime check of the library's annotations in the test session: tests/conftest.py installs
jaxtyping's import hook with this checker, so every call into ``interpipe`` checks its arguments and
return value against the annotations, tensor shapes included (a dimension name binds one size per
call: ``Float[Tensor, "batch pos"]`` twice in a signature means the same batch and pos).

beartype with PEP 484's numeric tower: an ``int`` is a valid ``float``, as the annotations mean it.
"""

from beartype import BeartypeConf, beartype

typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))
