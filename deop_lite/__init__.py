"""deop_lite: DeOP (Han et al., ICCV 2023) rebuilt step by step, for teaching and research.

Modules are the boxes of the DeOP diagram, then the plumbing that serves them:

- ``toyworld``: the procedural toy world (stuff textures, things assembled from parts, captions, seen/unseen split)
- ``clip``: CLIP in both worlds: the toy CLIP (word tokenizer, small ViT, checkpoint) and open_clip's; dense patch
  features, text classifiers
- ``toyclip``: the toy CLIP's contrastive pre-training on captions, its zero-shot evaluation and the gate
- ``proposals``: the class-agnostic mask proposal network (MaskFormer), its training, recall and refinement
- ``transformer``: DETR's decoder layer and sine positions, shared by ``proposals`` and ``anchors``
- ``losses``: Hungarian matching, focal and dice mask losses (ignore-aware), DeOP's segmentation loss
- ``prompts``: learned text context and visual prompts (added or prepended)
- ``severance``: patch severance in CLIP's ViT (GPS, MPS, the official GPS-with-mask) and its successors
- ``anchors``: classification anchor learning (CAL): query- and conv-based heatmap decoders
- ``model``: the decoupled one-pass model, from the baseline to DeOP; one config per variant, their training
- ``multipass``: the multi-pass rival (SimBaseline's classifier: one CLIP pass per proposal crop)
- ``metrics``: ZS3 segmentation metrics (seen/unseen mIoU, hIoU, pAcc), the label conventions, a table printer
- ``datasets``: PASCAL VOC, COCO-Stuff, Pascal Context, ADE20K: prepare, load, training samples
- ``realworld``: the paper's presets, the three stages, torchrun / DDP, evaluation to JSON
- ``bench``: FLOPs and timings of one pass against many, the toy world's speed, the explorer's latency
- ``train``: the one resumable training loop and the one stage skeleton (train, evaluate, ship) shared by every
  stage, and safetensors checkpoints
- ``viz``: every figure (palette, overlays, galleries, confusion matrices, the pipeline, the α explorer)
- ``cli``: the ``deop-lite`` command
- ``checks``: what users hand the package (class lists, images, masks, folders) checked before any
  computation; ``InputError``; one line and exit status 2 for a mistake at every command line
- ``runtime``: run mode (``DEOP_CI=1``), seeds, paths, device
"""
__version__ = "0.1.0"
