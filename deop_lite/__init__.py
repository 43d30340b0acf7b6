"""deop_lite: DeOP (Han et al., ICCV 2023) rebuilt step by step, for teaching and research.

Modules are the boxes of the DeOP diagram (the model core, which knows no world), then the worlds that feed
them, the stages that train them, and the plumbing that serves them.

The model core:

- ``clip``: CLIP in both worlds: the toy CLIP (word tokenizer, small ViT, checkpoint) and open_clip's; dense patch
  features, text classifiers
- ``proposals``: the class-agnostic mask proposal network (MaskFormer), its recall and the refinement of its masks
- ``transformer``: DETR's decoder layer and sine positions, shared by ``proposals`` and ``anchors``
- ``prompts``: learned text context and visual prompts (added or prepended)
- ``severance``: patch severance in CLIP's ViT (GPS, MPS, the official GPS-with-mask) and its successors, as one
  ``Severance`` value
- ``anchors``: classification anchor learning (CAL): query- and conv-based heatmap decoders
- ``model``: DeOP = the proposal network + a ``MaskClassifier`` (CLIP, prompts, severance, CAL, void)
- ``multipass``: the multi-pass rival, a second mask classifier (SimBaseline's: one CLIP pass per mask crop)
- ``losses``: Hungarian matching, focal and dice mask losses (ignore-aware), DeOP's segmentation loss

The worlds and the stages:

- ``world``: what a world gives (classes and their zero-shot split, seeded training batches that shard across
  processes, a validation set, its post-processing of proposals), and evaluation in any world
- ``toyworld``: the procedural toy world (stuff textures, things assembled from parts, captions, seen/unseen split)
- ``datasets``: PASCAL VOC, COCO-Stuff, Pascal Context, ADE20K: prepare, load, training samples, each as a world
- ``stages``: every training stage, ``train_X(world, stage, run)``: the toy CLIP's pre-training, the offline text
  prompts, the proposal network, DeOP; the toy world's named variants and shipped files; their command line
- ``toyclip``: the toy CLIP's contrastive objective, its zero-shot evaluation and the gate
- ``realworld``: the paper's presets, torchrun / DDP, the stages on a real dataset, evaluation to JSON

The plumbing:

- ``metrics``: ZS3 segmentation metrics (seen/unseen mIoU, hIoU, pAcc), the label conventions, a table printer
- ``bench``: FLOPs and timings of one pass against many, the toy world's speed, the explorer's latency
- ``train``: the one resumable training loop (micro-batches and processes included) and safetensors checkpoints
- ``viz``: every figure (palette, overlays, galleries, confusion matrices, the pipeline, the α explorer)
- ``cli``: the ``deop-lite`` command
- ``checks``: what users hand the package (class lists, images, masks, folders) checked before any
  computation; ``InputError``; one line and exit status 2 for a mistake at every command line
- ``runtime``: run mode (``DEOP_CI=1``), seeds, paths, device
"""
__version__ = "0.1.0"
