"""Default config: detectron2's key layout plus Mask2Former's additions.

Users' YAML files and full config dumps written by detectron2 must merge unchanged, so the
keys and defaults follow detectron2 0.6 and Mask2Former's ``add_maskformer2_config``. Sections
this product does not use (RPN, ROI heads, RetinaNet, ...) accept any content and are ignored.
"""

from __future__ import annotations

from fvcore.common.config import CfgNode

# detectron2 sections that only other meta-architectures read: accepted, never used here.
_IGNORED_MODEL_SECTIONS = (
    "ANCHOR_GENERATOR",
    "PROPOSAL_GENERATOR",
    "RPN",
    "ROI_HEADS",
    "ROI_BOX_HEAD",
    "ROI_BOX_CASCADE_HEAD",
    "ROI_MASK_HEAD",
    "ROI_KEYPOINT_HEAD",
    "RETINANET",
    "PANOPTIC_FPN",
    "FPN",
)


def _ignored_section() -> CfgNode:
    node = CfgNode()
    node.set_new_allowed(True)
    return node


def _model_defaults() -> CfgNode:
    model = CfgNode()
    model.LOAD_PROPOSALS = False
    model.MASK_ON = False
    model.KEYPOINT_ON = False
    model.DEVICE = "cuda"
    model.META_ARCHITECTURE = "MaskFormer"
    model.WEIGHTS = ""
    model.PIXEL_MEAN = [103.530, 116.280, 123.675]
    model.PIXEL_STD = [1.0, 1.0, 1.0]

    model.BACKBONE = CfgNode()
    model.BACKBONE.NAME = "build_resnet_backbone"
    model.BACKBONE.FREEZE_AT = 2

    resnets = model.RESNETS = CfgNode()
    resnets.DEPTH = 50
    resnets.OUT_FEATURES = ["res4"]
    resnets.NUM_GROUPS = 1
    resnets.NORM = "FrozenBN"
    resnets.WIDTH_PER_GROUP = 64
    resnets.STRIDE_IN_1X1 = True
    resnets.RES5_DILATION = 1
    resnets.RES2_OUT_CHANNELS = 256
    resnets.STEM_OUT_CHANNELS = 64
    resnets.DEFORM_ON_PER_STAGE = [False, False, False, False]
    resnets.DEFORM_MODULATED = False
    resnets.DEFORM_NUM_GROUPS = 1
    # Mask2Former additions
    resnets.STEM_TYPE = "basic"
    resnets.RES4_DILATION = 1
    resnets.RES5_MULTI_GRID = [1, 1, 1]

    head = model.SEM_SEG_HEAD = CfgNode()
    head.NAME = "SemSegFPNHead"
    head.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    head.IGNORE_VALUE = 255
    head.NUM_CLASSES = 54
    head.CONVS_DIM = 128
    head.COMMON_STRIDE = 4
    head.NORM = "GN"
    head.LOSS_WEIGHT = 1.0
    # Mask2Former additions
    head.MASK_DIM = 256
    head.TRANSFORMER_ENC_LAYERS = 0
    head.PIXEL_DECODER_NAME = "BasePixelDecoder"
    head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    head.ASPP_CHANNELS = 256
    head.ASPP_DILATIONS = [6, 12, 18]
    head.ASPP_DROPOUT = 0.1
    head.USE_DEPTHWISE_SEPARABLE_CONV = False
    head.PROJECT_FEATURES = ["res2"]
    head.PROJECT_CHANNELS = [48]
    head.LOSS_TYPE = "hard_pixel_mining"
    # This product's additions (not upstream; 0 = off): sin/cos pixel positions at periods
    # POSITION_MIN_PERIOD * 2**k px, k < POSITION_FEATURES, in the mask features and the decoder's memory.
    head.POSITION_FEATURES = 0
    head.POSITION_MIN_PERIOD = 16

    mf = model.MASK_FORMER = CfgNode()
    mf.DEEP_SUPERVISION = True
    mf.NO_OBJECT_WEIGHT = 0.1
    mf.CLASS_WEIGHT = 1.0
    mf.DICE_WEIGHT = 1.0
    mf.MASK_WEIGHT = 20.0
    mf.NHEADS = 8
    mf.DROPOUT = 0.1
    mf.DIM_FEEDFORWARD = 2048
    mf.ENC_LAYERS = 0
    mf.DEC_LAYERS = 6
    mf.PRE_NORM = False
    mf.HIDDEN_DIM = 256
    mf.NUM_OBJECT_QUERIES = 100
    mf.TRANSFORMER_IN_FEATURE = "res5"
    mf.ENFORCE_INPUT_PROJ = False
    mf.SIZE_DIVISIBILITY = 32
    mf.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    mf.TRAIN_NUM_POINTS = 112 * 112
    mf.OVERSAMPLE_RATIO = 3.0
    mf.IMPORTANCE_SAMPLE_RATIO = 0.75
    mf.TEST = CfgNode()
    mf.TEST.SEMANTIC_ON = True
    mf.TEST.INSTANCE_ON = False
    mf.TEST.PANOPTIC_ON = False
    mf.TEST.OBJECT_MASK_THRESHOLD = 0.0
    mf.TEST.OVERLAP_THRESHOLD = 0.0
    mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False

    swin = model.SWIN = CfgNode()
    swin.PRETRAIN_IMG_SIZE = 224
    swin.PATCH_SIZE = 4
    swin.EMBED_DIM = 96
    swin.DEPTHS = [2, 2, 6, 2]
    swin.NUM_HEADS = [3, 6, 12, 24]
    swin.WINDOW_SIZE = 7
    swin.MLP_RATIO = 4.0
    swin.QKV_BIAS = True
    swin.QK_SCALE = None
    swin.DROP_RATE = 0.0
    swin.ATTN_DROP_RATE = 0.0
    swin.DROP_PATH_RATE = 0.3
    swin.APE = False
    swin.PATCH_NORM = True
    swin.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    swin.USE_CHECKPOINT = False

    for section in _IGNORED_MODEL_SECTIONS:
        setattr(model, section, _ignored_section())
    return model


def _input_defaults() -> CfgNode:
    node = CfgNode()
    node.MIN_SIZE_TRAIN = (800,)
    node.MIN_SIZE_TRAIN_SAMPLING = "choice"
    node.MAX_SIZE_TRAIN = 1333
    node.MIN_SIZE_TEST = 800
    node.MAX_SIZE_TEST = 1333
    node.RANDOM_FLIP = "horizontal"
    node.CROP = CfgNode()
    node.CROP.ENABLED = False
    node.CROP.TYPE = "relative_range"
    node.CROP.SIZE = [0.9, 0.9]
    node.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    node.FORMAT = "BGR"
    node.MASK_FORMAT = "polygon"
    # Mask2Former additions
    node.DATASET_MAPPER_NAME = "mask_former_semantic"
    node.COLOR_AUG_SSD = False
    node.SIZE_DIVISIBILITY = -1
    node.IMAGE_SIZE = 1024
    node.MIN_SCALE = 0.1
    node.MAX_SCALE = 2.0
    return node


def _datasets_defaults() -> CfgNode:
    node = CfgNode()
    node.TRAIN = ()
    node.PROPOSAL_FILES_TRAIN = ()
    node.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = 2000
    node.TEST = ()
    node.PROPOSAL_FILES_TEST = ()
    node.PRECOMPUTED_PROPOSAL_TOPK_TEST = 1000
    # Product addition: class names in model order, used when DATASETS.TEST names a dataset
    # the catalog does not know (detectron2 keeps them in dataset metadata instead).
    node.CLASS_NAMES = []
    # Product additions (training): where dataset names resolve. ROOT falls back to
    # $DETECTRON2_DATASETS, then ./datasets; REGISTER rows are [name, annotations, images(, format)].
    node.ROOT = ""
    node.REGISTER = []
    return node


def _solver_defaults() -> CfgNode:
    node = CfgNode()
    node.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
    node.MAX_ITER = 40000
    node.BASE_LR = 0.001
    node.MOMENTUM = 0.9
    node.NESTEROV = False
    node.WEIGHT_DECAY = 0.0001
    node.WEIGHT_DECAY_NORM = 0.0
    node.GAMMA = 0.1
    node.STEPS = (30000,)
    node.WARMUP_FACTOR = 1.0 / 1000
    node.WARMUP_ITERS = 1000
    node.WARMUP_METHOD = "linear"
    node.CHECKPOINT_PERIOD = 5000
    node.IMS_PER_BATCH = 16
    node.REFERENCE_WORLD_SIZE = 0
    node.BIAS_LR_FACTOR = 1.0
    node.WEIGHT_DECAY_BIAS = None
    node.CLIP_GRADIENTS = CfgNode()
    node.CLIP_GRADIENTS.ENABLED = False
    node.CLIP_GRADIENTS.CLIP_TYPE = "value"
    node.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    node.CLIP_GRADIENTS.NORM_TYPE = 2.0
    node.AMP = CfgNode()
    node.AMP.ENABLED = False
    # Mask2Former additions
    node.WEIGHT_DECAY_EMBED = 0.0
    node.OPTIMIZER = "ADAMW"
    node.BACKBONE_MULTIPLIER = 0.1
    node.POLY_LR_POWER = 0.9
    node.POLY_LR_CONSTANT_ENDING = 0.0
    return node


def _test_defaults() -> CfgNode:
    node = CfgNode()
    node.EXPECTED_RESULTS = []
    node.EVAL_PERIOD = 0
    node.KEYPOINT_OKS_SIGMAS = []
    node.DETECTIONS_PER_IMAGE = 100
    node.AUG = CfgNode()
    node.AUG.ENABLED = False
    node.AUG.MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
    node.AUG.MAX_SIZE = 4000
    node.AUG.FLIP = True
    node.PRECISE_BN = CfgNode()
    node.PRECISE_BN.ENABLED = False
    node.PRECISE_BN.NUM_ITER = 200
    return node


def _dataloader_defaults() -> CfgNode:
    node = CfgNode()
    node.NUM_WORKERS = 4
    node.ASPECT_RATIO_GROUPING = True
    node.SAMPLER_TRAIN = "TrainingSampler"
    node.REPEAT_THRESHOLD = 0.0
    node.FILTER_EMPTY_ANNOTATIONS = True
    return node


def _deploy_defaults() -> CfgNode:
    """Product addition: how the predictor runs (never read by detectron2)."""
    node = CfgNode()
    node.BACKEND = "auto"  # auto | torch | openvino
    node.PRECISION = "auto"  # auto | fp32 | bf16 | fp16
    node.SCORE_THRESHOLD = 0.5
    node.CACHE_DIR = ""
    # CPU: the fused deformable-sampling kernel (numba, the "openvino" extra) where installed;
    # False keeps the PyTorch/OpenVINO graph sampling
    node.FUSED_SAMPLING = True
    return node


def get_default_cfg() -> CfgNode:
    """A fresh, mutable default config (every call returns a new object)."""
    cfg = CfgNode()
    cfg.VERSION = 2
    cfg.MODEL = _model_defaults()
    cfg.INPUT = _input_defaults()
    cfg.DATASETS = _datasets_defaults()
    cfg.DATALOADER = _dataloader_defaults()
    cfg.SOLVER = _solver_defaults()
    cfg.TEST = _test_defaults()
    cfg.DEPLOY = _deploy_defaults()
    cfg.OUTPUT_DIR = "./output"
    cfg.SEED = -1
    cfg.CUDNN_BENCHMARK = False
    cfg.VIS_PERIOD = 0
    cfg.GLOBAL = CfgNode()
    cfg.GLOBAL.HACK = 1.0
    return cfg
