"""astropt: large observation models of galaxy images."""

__version__ = "0.1.0"

# GPT.from_pretrained, save_pretrained and push_to_hub are defined in astropt.hub (above
# astropt.model in the import order) and the finetuned model class registers its folder part
# with the Hub loader: importing them here makes both hold whatever astropt module is imported.
import astropt.finetune.model  # noqa: E402, F401
from astropt import hub  # noqa: E402, F401
