"""The one place that maps config keys onto constructor arguments."""

from __future__ import annotations

from fvcore.common.config import CfgNode
from torch import nn

from ..modeling.backbone.resnet import ResNet
from ..modeling.backbone.swin import SwinTransformer
from ..modeling.meta_arch import MaskFormer, MaskFormerHead
from ..modeling.pixel_decoder.msdeformattn import MSDeformAttnPixelDecoder
from ..modeling.transformer_decoder import MultiScaleMaskedTransformerDecoder
from .loader import ConfigError

# Upstream hard-codes the deformable encoder's FFN width (MASK_FORMER.DIM_FEEDFORWARD is the decoder's).
_DEFORMABLE_ENCODER_FFN = 1024


def build_backbone(cfg: CfgNode) -> nn.Module:
    name = cfg.MODEL.BACKBONE.NAME
    if name == "D2SwinTransformer":
        swin = cfg.MODEL.SWIN
        return SwinTransformer(
            pretrain_img_size=swin.PRETRAIN_IMG_SIZE,
            patch_size=swin.PATCH_SIZE,
            embed_dim=swin.EMBED_DIM,
            depths=list(swin.DEPTHS),
            num_heads=list(swin.NUM_HEADS),
            window_size=swin.WINDOW_SIZE,
            mlp_ratio=swin.MLP_RATIO,
            qkv_bias=swin.QKV_BIAS,
            qk_scale=swin.QK_SCALE,
            drop_rate=swin.DROP_RATE,
            attn_drop_rate=swin.ATTN_DROP_RATE,
            drop_path_rate=swin.DROP_PATH_RATE,
            ape=swin.APE,
            patch_norm=swin.PATCH_NORM,
            out_features=list(swin.OUT_FEATURES),
            use_checkpoint=swin.USE_CHECKPOINT,
        )
    if name == "build_resnet_backbone":
        resnets = cfg.MODEL.RESNETS
        if any(resnets.DEFORM_ON_PER_STAGE):
            raise ConfigError("MODEL.RESNETS.DEFORM_ON_PER_STAGE needs detectron2's compiled deformable "
                              "convolution, which this product does not ship")
        if resnets.STEM_TYPE != "basic" or resnets.RES4_DILATION != 1:
            raise ConfigError("only the basic ResNet stem and RES4_DILATION 1 are supported")
        return ResNet(
            depth=resnets.DEPTH,
            out_features=list(resnets.OUT_FEATURES),
            norm=resnets.NORM,
            num_groups=resnets.NUM_GROUPS,
            width_per_group=resnets.WIDTH_PER_GROUP,
            stem_out_channels=resnets.STEM_OUT_CHANNELS,
            res2_out_channels=resnets.RES2_OUT_CHANNELS,
            stride_in_1x1=resnets.STRIDE_IN_1X1,
            res5_dilation=resnets.RES5_DILATION,
            freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        )
    raise ConfigError(f"MODEL.BACKBONE.NAME {name!r} is not supported; use D2SwinTransformer or "
                      "build_resnet_backbone")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def build_model(cfg: CfgNode) -> MaskFormer:
    """Builds the (randomly initialised) model a config describes; load weights separately."""
    mf, head = cfg.MODEL.MASK_FORMER, cfg.MODEL.SEM_SEG_HEAD
    _require(cfg.MODEL.META_ARCHITECTURE == "MaskFormer",
             f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r}: only MaskFormer is supported")
    _require(head.NAME == "MaskFormerHead", f"MODEL.SEM_SEG_HEAD.NAME {head.NAME!r}: only MaskFormerHead")
    _require(head.PIXEL_DECODER_NAME == "MSDeformAttnPixelDecoder",
             f"PIXEL_DECODER_NAME {head.PIXEL_DECODER_NAME!r}: only MSDeformAttnPixelDecoder is supported")
    _require(mf.TRANSFORMER_DECODER_NAME == "MultiScaleMaskedTransformerDecoder",
             f"TRANSFORMER_DECODER_NAME {mf.TRANSFORMER_DECODER_NAME!r}: only "
             "MultiScaleMaskedTransformerDecoder is supported")
    _require(mf.TRANSFORMER_IN_FEATURE == "multi_scale_pixel_decoder",
             "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE must be multi_scale_pixel_decoder")
    _require(mf.DEC_LAYERS >= 1, "MODEL.MASK_FORMER.DEC_LAYERS must be >= 1")
    _require(mf.TEST.INSTANCE_ON, "this product does instance segmentation: set MASK_FORMER.TEST.INSTANCE_ON")
    _require(len(cfg.MODEL.PIXEL_MEAN) == 3 and len(cfg.MODEL.PIXEL_STD) == 3,
             "MODEL.PIXEL_MEAN and PIXEL_STD need three values")

    backbone = build_backbone(cfg)
    shapes = {name: shape for name, shape in backbone.output_shape().items() if name in head.IN_FEATURES}
    _require(set(head.IN_FEATURES) <= set(shapes),
             f"SEM_SEG_HEAD.IN_FEATURES {list(head.IN_FEATURES)} not all produced by the backbone "
             f"({sorted(backbone.output_shape())})")
    pixel_decoder = MSDeformAttnPixelDecoder(
        shapes,
        transformer_dropout=mf.DROPOUT,
        transformer_nheads=mf.NHEADS,
        transformer_dim_feedforward=_DEFORMABLE_ENCODER_FFN,
        transformer_enc_layers=head.TRANSFORMER_ENC_LAYERS,
        conv_dim=head.CONVS_DIM,
        mask_dim=head.MASK_DIM,
        norm=head.NORM,
        transformer_in_features=list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
        common_stride=head.COMMON_STRIDE,
        position_features=head.POSITION_FEATURES,
        position_min_period=head.POSITION_MIN_PERIOD,
    )
    predictor = MultiScaleMaskedTransformerDecoder(
        head.CONVS_DIM,
        num_classes=head.NUM_CLASSES,
        hidden_dim=mf.HIDDEN_DIM,
        num_queries=mf.NUM_OBJECT_QUERIES,
        nheads=mf.NHEADS,
        dim_feedforward=mf.DIM_FEEDFORWARD,
        dec_layers=mf.DEC_LAYERS - 1,
        pre_norm=mf.PRE_NORM,
        mask_dim=head.MASK_DIM,
        enforce_input_project=mf.ENFORCE_INPUT_PROJ,
        position_features=head.POSITION_FEATURES,
        position_min_period=head.POSITION_MIN_PERIOD,
        level_strides=[shapes[name].stride for name in head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES][::-1],
    )
    return MaskFormer(
        backbone=backbone,
        sem_seg_head=MaskFormerHead(pixel_decoder, predictor),
        num_classes=head.NUM_CLASSES,
        num_queries=mf.NUM_OBJECT_QUERIES,
        no_object_weight=mf.NO_OBJECT_WEIGHT,
        pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
        pixel_std=list(cfg.MODEL.PIXEL_STD),
        size_divisibility=mf.SIZE_DIVISIBILITY,
    )
