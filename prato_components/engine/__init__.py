"""Training and evaluation glue: losses with pruner side terms, ignite handlers."""

from prato_components.engine.handlers import TokenSparsityHandler, summarise_token_reports
from prato_components.engine.losses import PrunedSegLoss, label_on_grid
