"""The pruned backbones (UNETR, TransUNet, SegFormer, Swin UNETR) and their shared pruning set-up."""

from prato_components.networks.clicks import ClickEncoder, ClickSession, SessionNetwork
from prato_components.networks.inputs import check_image, check_network_boxes
from prato_components.networks.segformer import SEGFORMER_STAGES, SEGFORMER_VARIANTS, SegFormer
from prato_components.networks.swin_unetr import SWIN_STAGES, PrunedSwinUNETR, patch_swin_unetr
from prato_components.networks.transunet import TRANSUNET_STAGES, TransUNet
from prato_components.networks.unetr import UNETR_STAGES, PrunedUNETR, patch_unetr
from prato_components.networks.vit_pruning import PruningSettings, build_pruner, executor_mode

