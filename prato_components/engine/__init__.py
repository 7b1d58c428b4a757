"""Training and evaluation glue: losses with pruner side terms, ignite handlers, inferer, checkpoints, simulated
corrective clicks (training and the interactive evaluation)."""

from prato_components.engine.checkpoint import (
    RUN_TIME_SETTINGS,
    BestModelSaver,
    TrainingCheckpoint,
    atomic_save,
    check_trained_settings,
    differing_settings,
    load_weights,
    trained_settings,
)
from prato_components.engine.click_evaluation import (
    InteractiveEvaluation,
    StructureRecord,
    clicks_to_reach,
    dice_auc,
    draw_dice_curve,
    interactive_evaluation,
    summarise_interactive,
)
from prato_components.engine.click_training import ClickTrainingBatch
from prato_components.engine.clicks import Click, append_clicks, clicked_error, error_masks, next_click, sample_click
from prato_components.engine.distributed import is_writer_rank, unwrap
from prato_components.engine.evaluation import EvaluationReport
from prato_components.engine.handlers import (
    PerClassHistory,
    PruningWarmup,
    TokenSparsityHandler,
    keep_ratio_schedule,
    summarise_token_reports,
)
from prato_components.engine.inferers import (
    PromptedInferer,
    PromptedSlidingWindowInferer,
    WindowReport,
    boxes_for_slices,
    boxes_in_window,
    windows_touching_boxes,
)
from prato_components.engine.inspection import record_retention
from prato_components.engine.losses import DistillationLoss, PrunedSegLoss, label_on_grid, presence_on_grid
