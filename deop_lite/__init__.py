"""deop_lite: DeOP (Han et al., ICCV 2023) rebuilt step by step, for teaching and research.

Modules are the boxes of the DeOP diagram:

- ``toyworld``: the procedural toy world (stuff textures, thing shapes, captions, seen/unseen split)
- ``clip``: CLIP in both worlds (toy and open_clip), dense patch features, text classifiers
- ``toyclip``: the toy CLIP's tokenizer, config, contrastive pre-training and checkpoint
- ``proposals``: the class-agnostic mask proposal network (MaskFormer), its training and recall
- ``losses``: Hungarian matching, focal and dice mask losses (ignore-aware)
- ``severance``: patch severance in CLIP's ViT (GPS, MPS, the official GPS-with-mask)
- ``model``: the decoupled one-pass model: mask pooling, segment classification, semantic map
- ``metrics``: ZS3 segmentation metrics (seen/unseen mIoU, hIoU, pAcc)
- ``train``: the one resumable training loop shared by every stage, and safetensors checkpoints
- ``viz``: every figure (palette, overlays, galleries, confusion matrices, the pipeline)
- ``cli``: the ``deop-lite`` command
- ``checks``: what users hand the package (class lists, images, masks, folders) checked before any
  computation; ``InputError``; one line and exit status 2 for a mistake at every command line
- ``runtime``: run mode (``DEOP_CI=1``), seeds, paths, device
"""
__version__ = "0.1.0"
