"""Token pruners behind one interface (:mod:`.base`), available by name (:mod:`.registry`)."""

from prato_components.pruners.base import (
    TokenPruner,
    attention_scores_on_grid,
    keep_count,
    select_threshold,
    select_topk,
)
from prato_components.pruners.dtop import DTOP_BUDGETS, DToP, protected_tokens
from prato_components.pruners.dynamicvit import DynamicViT
from prato_components.pruners.evovit import (
    EvoViT,
    attention_received,
    reduced_attention_received,
    representative_weights,
    window_attention_received,
)
from prato_components.pruners.prato import PrATo, entropy_rank_weights, prompt_boxes_or_image
from prato_components.pruners.predictor import LocalGlobalPredictor
from prato_components.pruners.random import RandomPruner
from prato_components.pruners.registry import PRUNERS, create_pruner, register_pruner
from prato_components.pruners.roi_align import roi_align
from prato_components.pruners.stp import STP, MultiLayerTokenAssembly
from prato_components.pruners.tram import (
    TRAM,
    attention_graph_centrality,
    reduced_attention_graph_centrality,
    window_attention_graph_centrality,
)

