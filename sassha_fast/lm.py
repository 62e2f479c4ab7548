"""The authors' language-model SASSHA under the import their GPT-2 script uses::

    from sassha_fast.lm import SASSHA

(``sassha_fast.optim.language_model`` defines it; see there and docs/usage.md)."""
from .optim.language_model import LanguageModelSASSHA

# The authors' class name.
SASSHA = LanguageModelSASSHA

__all__ = ["LanguageModelSASSHA", "SASSHA"]
