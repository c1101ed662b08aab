"""NAS's paper card (NAS_METHOD.md §1) and the method decisions (§3–§6) as data, for the audit.

The card's vocabulary (`CardEntry`, `Equals`, ...) and how to read its paths: nas/config/card.py. NAS's
stages read `finetune` as the model fine-tuning builds: its `model_overrides`, also its `mlm_weight` and
`image_size` as `vision.img_size` (as nas/recipes/finetune.py builds the model). Registered with the audit
as the recipe "nas" (nas/recipes/__init__.py).
"""

from __future__ import annotations

from typing import Any

from nas.config.card import (
    CardEntry,
    Equals,
    Expectation,
    KnownDifference,
    NotNull,
    Present,
    SameAs,
    check_card,
)

S1, S2, FT = "pretrain_stage1", "pretrain_stage2", "finetune"
M = "model.overrides"
E1, E2 = f"{S1}.model_overrides", f"{S2}.model_overrides"  # the model as stage 1 / stage 2 build it
F = f"{FT}.model_overrides"  # the model as fine-tuning builds it (NAS_METHOD §5, §6)


def _both_stages(suffix: str, value: Any) -> tuple[tuple[str, Expectation], ...]:
    return ((f"{S1}.{suffix}", Equals(value)), (f"{S2}.{suffix}", Equals(value)))


def _all_stages(suffix: str, value: Any) -> tuple[tuple[str, Expectation], ...]:
    """Both pretraining stages and fine-tuning."""
    return _both_stages(suffix, value) + ((f"{FT}.{suffix}", Equals(value)),)


PAPER_CARD: tuple[CardEntry, ...] = (
    # ---- [P] NAS_METHOD §1: what the paper states --------------------------------------------------
    CardEntry(
        "pretraining_data",
        "pretraining data",
        "COCO, Visual Genome, CC3M, SBU Captions: 4M images, 5.1M pairs",
        "[P] Datasets",
        (("data.source", Equals("files")),),
        note="which corpora the files hold is not a param: the `pretrain` selection of nas/data/catalog.py",
    ),
    CardEntry(
        "text_encoder",
        "text encoder init",
        "BERT-base (uncased)",
        "[P] Implementation details",
        (
            (f"{M}.text.pretrained", NotNull("bert-base-uncased weights")),
            (f"{M}.text.hidden_size", Equals(768)),
            (f"{M}.text.num_heads", Equals(12)),
            (f"{M}.text.intermediate_size", Equals(3072)),
            (f"{M}.text.vocab_size", Equals(30522)),
        ),
    ),
    CardEntry(
        "image_encoder",
        "image encoder init",
        "DeiT-224/16 (DeiT-base, patch 16)",
        "[P] Implementation details",
        (
            (f"{M}.vision.model_name", Equals("deit_base_patch16_224")),
            (f"{M}.vision.pretrained", NotNull("DeiT-base/16 weights")),
            (f"{M}.vision.patch_size", Equals(16)),
            (f"{M}.vision.embed_dim", Equals(768)),
            (f"{M}.vision.depth", Equals(12)),
            (f"{M}.vision.num_heads", Equals(12)),
        ),
    ),
    CardEntry(
        "stage1_epochs",
        "stage 1 epochs",
        "29",
        "[P] Experiment setup",
        ((f"{S1}.train.epochs", Equals(29)),),
        known_differences=(
            KnownDifference(
                "[A]",
                "the stage-1 checkpoint is the 30th pass (checkpoint_29, indices 0-29; ALBEF's Pretrain.yaml "
                "says epochs: 30)",
                f"{S1}.train.epochs",
                30,
            ),
        ),
    ),
    CardEntry(
        "stage2_epochs",
        "stage 2 epochs",
        "1",
        "[P] Experiment setup",
        ((f"{S2}.train.epochs", Equals(1)),),
        known_differences=(
            KnownDifference(
                "[A]",
                "the stage-2 config says epochs: 35 (an absolute epoch index: 5 more passes), but its "
                "fine-tuning starts from checkpoint_30, i.e. after one stage-2 epoch, as the paper says",
            ),
        ),
    ),
    CardEntry(
        "global_batch",
        "global batch size",
        "512 (8 GPUs x 64)",
        "[P] Experiment setup, Hardware",
        (
            ("loader.batch_size_per_gpu", Equals(64)),
            (f"{S1}.train.launch.nproc_per_node", Equals(8)),
            (f"{S2}.train.launch.nproc_per_node", Equals(8)),
        ),
    ),
    CardEntry(
        "weight_decay",
        "optimizer",
        "AdamW, weight decay 0.02",
        "[P] Experiment setup",
        _both_stages("train.optim.weight_decay", 0.02),
        note="AdamW itself is fixed in nas/engine/optim.py",
    ),
    CardEntry(
        "warmup",
        "warm-up",
        "first 1,000 iterations, to peak lr 1e-4",
        "[P] Experiment setup",
        # Stage 2 continues stage 1's schedule (at its floor), so its schedule must have the same shape.
        _both_stages("train.schedule.warmup_steps", 1000) + _both_stages("train.schedule.lr", 1e-4),
        known_differences=(
            KnownDifference(
                "[A]",
                "2,000 iterations (ALBEF's scheduler: warmup_epochs 20 x step 100), a staircase from 1e-5 "
                "that steps every 100 iterations",
                f"{S1}.train.schedule.warmup_steps",
                2000,
            ),
            KnownDifference(
                "[A]",
                "as in stage 1 (stage 2 continues the schedule)",
                f"{S2}.train.schedule.warmup_steps",
                2000,
            ),
        ),
    ),
    CardEntry(
        "lr_decay",
        "decay",
        "cosine, to 1e-5",
        "[P] Experiment setup",
        _both_stages("train.schedule.min_lr", 1e-5),
        known_differences=(
            KnownDifference(
                "[B]",
                "ALBEF's Pretrain.py (which [A] keeps) steps the cosine once per epoch; the harness decays "
                "per iteration",
            ),
        ),
    ),
    CardEntry(
        "pretraining_crop",
        "pretraining crop",
        "random crop 256 x 256 + RandAugment",
        "[P] Experiment setup",
        (
            ("data.transform.image_size", Equals(256)),
            (f"{M}.vision.img_size", Equals(256)),
            ("data.transform.randaugment", Equals(True)),
        ),
    ),
    CardEntry(
        "finetune_resolution",
        "fine-tuning resolution",
        "384 x 384, patch position embeddings interpolated",
        "[P] Experiment setup",
        ((f"{FT}.image_size", Equals(384)), (f"{F}.vision.img_size", Equals(384))),
        note="the stage interpolates the position embeddings of the online and momentum ViT "
        "(ALBEF.set_image_size) before it builds the optimizer",
    ),
    CardEntry(
        "momentum",
        "momentum-model coefficient",
        "0.995",
        "[P] Experiment setup",
        ((f"{M}.momentum", Equals(0.995)),),
    ),
    CardEntry(
        "itm_negatives",
        "ITM in-batch negatives",
        "hard: sampled ∝ softmax of the ITC similarity, from step 1",
        "[B] ALBEF model_pretrain.py",
        (
            (f"{M}.itm_negatives.uniform_steps", Equals(0)),
            (f"{M}.itm_negatives.final_hard_fraction", Equals(1.0)),
        ),
        kind="base",
    ),
    CardEntry(
        "queue_size",
        "ITC queue length",
        "65,536",
        "[P] Experiment setup",
        ((f"{M}.queue_size", Equals(65536)),),
    ),
    CardEntry(
        "alpha",
        "distillation weight α",
        "linear ramp 0 -> 0.4 within the 1st epoch",
        "[P] Experiment setup",
        (
            (f"{S1}.distillation.alpha", Equals(0.4)),
            (f"{S1}.distillation.ramp", Equals(True)),
            (f"{S2}.distillation.alpha", Equals(0.4)),
        ),
    ),
    CardEntry(
        "finetune_data",
        "fine-tuning data",
        "a text-augmented COCO (hard negative captions)",
        "[P] Dataset splits",
        (),
        known_differences=(
            KnownDifference("[A]", "fine-tuning on plain COCO captions (no hard-negative text)"),
        ),
        note="no param selects the fine-tuning pairs: the stage adds NTA hard-negative captions "
        "(finetune.nta, nas/data/nta.py) to data.train_file, the pretraining pairs (the paper profile's "
        "pretrain_4m.json: COCO + VG, not COCO alone)",
    ),
    CardEntry(
        "hardware",
        "hardware",
        "8 x NVIDIA A800",
        "[P] Hardware",
        (),
        note="the GPU type is not a param; the process count is checked under global batch size",
    ),
    CardEntry(
        "evaluation",
        "evaluation",
        "ARO, Winoground, VALSE",
        "[P] Results",
        (),
        note="`evaluate` scores every benchmark its data root provides (SugarCrepe in addition)",
    ),
    # ---- [B] ALBEF values the paper inherits --------------------------------------------------------
    CardEntry(
        "text_length",
        "caption cleaning and length",
        "pre_caption 30 words; 25 BERT tokens",
        "[B] ALBEF dataset/utils.py, Pretrain.py (max_length=25)",
        (("data.max_words", Equals(30)), ("data.text_max_length", Equals(25))),
        kind="base",
    ),
    CardEntry(
        "augmentation",
        "crop scale, flip, RandAugment",
        "RandomResizedCrop scale (0.2, 1), horizontal flip, RandomAugment(2, 7)",
        "[B] ALBEF dataset/__init__.py",
        (
            ("data.transform.crop_scale", Equals([0.2, 1.0])),
            ("data.transform.hflip", Equals(True)),
            ("data.transform.randaugment_n", Equals(2)),
            ("data.transform.randaugment_m", Equals(7)),
        ),
        kind="base",
    ),
    CardEntry(
        "fusion",
        "text / fusion split",
        "BERT-base layers 1-6 text, 7-12 fusion (+ cross-attention); dropout 0.1",
        "[B] ALBEF configs/config_bert.json",
        (
            (f"{M}.text.num_text_layers", Equals(6)),
            (f"{M}.text.num_fusion_layers", Equals(6)),
            (f"{M}.text.dropout", Equals(0.1)),
        ),
        kind="base",
    ),
    CardEntry(
        "objectives",
        "ITC / ITM / MLM",
        "embed 256, temperature 0.07, mask 15%, loss weights 1, momentum distillation",
        "[B] ALBEF configs/Pretrain.yaml",
        (
            (f"{M}.embed_dim", Equals(256)),
            (f"{M}.temp", Equals(0.07)),
            (f"{M}.mlm_probability", Equals(0.15)),
            (f"{M}.itc_weight", Equals(1.0)),
            (f"{M}.itm_weight", Equals(1.0)),
            (f"{M}.mlm_weight", Equals(1.0)),
            (f"{M}.distill", Equals(True)),
        ),
        kind="base",
    ),
    CardEntry(
        "adamw",
        "AdamW betas, eps; gradient clipping",
        "(0.9, 0.999), 1e-8; none",
        "[B] ALBEF optim (timm defaults)",
        _all_stages("train.optim.betas", [0.9, 0.999])
        + _all_stages("train.optim.eps", 1e-8)
        + _all_stages("train.grad_clip_norm", None),
        kind="base",
    ),
    CardEntry(
        "k_test",
        "retrieval re-ranking",
        "ITM re-ranks the ITC top 256",
        "[B] ALBEF configs/Retrieval_coco.yaml (k_test)",
        (("evaluate.retrieval.k_test", Equals(256)),),
        kind="base",
    ),
    # ---- [A]/[D] decisions of §3-§6 ---------------------------------------------------------------
    CardEntry(
        "stage2_init",
        "stage 2 starts from",
        "the stage-1 checkpoint: model, momentum model, optimizer, schedule, VD (and its random streams)",
        "[A] NAS_METHOD §6; [D] rng: stage 2 continues stage 1's data order and draws",
        (
            (f"{S2}.init_from", Equals(S1)),
            (f"{S2}.init_objects", Equals(["model", "optimizer", "lr_scheduler", "rng"])),
        ),
        kind="decision",
    ),
    CardEntry(
        "stage2_alpha_ramp",
        "α ramp in stage 2",
        "off: stage 2 continues at α = 0.4",
        "[D] (ALBEF ramps only in epoch 0; a resumed run does not)",
        ((f"{S2}.distillation.ramp", Equals(False)),),
        kind="decision",
    ),
    CardEntry(
        "warmup_start",
        "warm-up start lr",
        "0 (linear warm-up)",
        "[D] NAS_METHOD §6 (the paper says linear warm-up)",
        ((f"{S1}.train.schedule.warmup_start_lr", Equals(0.0)),),
        kind="decision",
        known_differences=(
            KnownDifference(
                "[A]",
                "the warm-up starts at ALBEF's warmup_lr 1e-5",
                f"{S1}.train.schedule.warmup_start_lr",
                1e-5,
            ),
        ),
    ),
    CardEntry(
        "queue_update",
        "ITC queue update",
        "every step",
        "[D] NAS_METHOD §6",
        ((f"{M}.queue_update", Equals(True)),),
        kind="decision",
        known_differences=(
            KnownDifference(
                "[A]",
                "_dequeue_and_enqueue is commented out in both pretraining stages (the queues stay noise)",
                f"{M}.queue_update",
                False,
            ),
        ),
    ),
    CardEntry(
        "vd_on",
        "visual dictionary on the ITM path",
        "on",
        "[A] NAS_METHOD §3",
        ((f"{M}.vd", Present("a visual dictionary")),),
        kind="switch",
    ),
    CardEntry(
        "nva_on",
        "NVA negatives in stage 2",
        "on (stage 2 and fine-tuning only)",
        "[P] NAS_METHOD §4.7, §6",
        ((f"{E2}.nva_enabled", Equals(True)),),
        kind="switch",
    ),
    CardEntry(
        "nva_stage1",
        "NVA in stage 1",
        "off",
        "[A] NAS_METHOD §4.7",
        ((f"{E1}.nva_enabled", Equals(False)),),
        kind="decision",
        requires="vd",
    ),
    CardEntry(
        "vd_codebook",
        "visual dictionary",
        "K = 2048 codes of width 768; EMA with Laplace ε = 1e-5; sine positions, temperature 10,000",
        "[A] NAS_METHOD §3",
        (
            (f"{M}.vd.num_codes", Equals(2048)),
            (f"{M}.vd.dim", Equals(768)),
            (f"{M}.vd.epsilon", Equals(1e-5)),
            (f"{M}.vd.position_temperature", Equals(10000.0)),
        ),
        kind="decision",
        requires="vd",
    ),
    CardEntry(
        "vd_gamma",
        "VD momentum γ",
        "linear ramp 0.2 -> 1 over the first 90% of stage 1, then frozen",
        "[A] NAS_METHOD §3",
        ((f"{M}.vd.gamma_start", Equals(0.2)), (f"{M}.vd.freeze_fraction", Equals(0.9))),
        kind="decision",
        requires="vd",
    ),
    CardEntry(
        "vd_frozen",
        "codebook frozen",
        "stage 1 no (EMA), stage 2 yes (the neck keeps training)",
        "[A] NAS_METHOD §3, §6",
        ((f"{E1}.vd.frozen", Equals(False)), (f"{E2}.vd.frozen", Equals(True))),
        kind="decision",
        requires="vd",
    ),
    CardEntry(
        "vd_init",
        "VD initialisation",
        "k-means over neck features of 1,024 images, 20 Lloyd iterations",
        "[D] NAS_METHOD §3 (VD construction stage)",
        (
            (f"{M}.vd.init", Equals("kmeans")),
            (f"{M}.vd.kmeans_sample_images", Equals(1024)),
            (f"{M}.vd.kmeans_iters", Equals(20)),
        ),
        kind="decision",
        requires="vd",
        known_differences=(
            KnownDifference(
                "[A]",
                "random init with the EMA state at zero: codes the first batch misses become zero vectors",
                f"{M}.vd.init",
                "random",
            ),
        ),
    ),
    CardEntry(
        "nva_score",
        "NVA patch score",
        "dot_l2norm: <v_i, T_cls>/||a_t|| + <v_i, V_cls>/||a_v||",
        "[A] NAS_METHOD §4.1",
        ((f"{E2}.nva.score", Equals("dot_l2norm")), (f"{F}.nva.score", Equals("dot_l2norm"))),
        kind="decision",
        requires="nva",
        known_differences=tuple(
            KnownDifference(
                "[P]", "the paper's summary speaks of cosine similarities", f"{at}.nva.score", "cosine"
            )
            for at in (E2, F)
        ),
    ),
    CardEntry(
        "nva_sampling",
        "NVA anchor and code",
        "anchor among the top-3 patches; code among the 2nd-4th nearest",
        "[A] NAS_METHOD §4.2, §4.4",
        tuple((f"{at}.nva.{name}", Equals(3)) for at in (E2, F) for name in ("top_k", "num_candidates")),
        kind="decision",
        requires="nva",
    ),
    CardEntry(
        "nva_candidates",
        "NVA candidate rule",
        "exclude the anchor's code and every code with the same vector",
        "[D] NAS_METHOD §4.4 (equals [A] without distance ties or duplicate code vectors)",
        tuple((f"{at}.nva.candidate_rule", Equals("exclude_anchor_code")) for at in (E2, F)),
        kind="decision",
        requires="nva",
        known_differences=tuple(
            KnownDifference(
                "[A]",
                "drops position 0 of the top-4, which can keep h_a, or a code with h_a's vector, among the "
                "candidates under exact ties (e.g. all-zero dead codes)",
                f"{at}.nva.candidate_rule",
                "drop_nearest",
            )
            for at in (E2, F)
        ),
    ),
    CardEntry(
        "nva_token_form",
        "NVA token form",
        "straight_through: pos_line(x_j + (d_c - x_j).detach())",
        "[A] NAS_METHOD §4.5 (final form)",
        tuple((f"{at}.nva.token_form", Equals("straight_through")) for at in (E2, F)),
        kind="decision",
        requires="nva",
        known_differences=tuple(
            KnownDifference(
                "[A]",
                "the first stage-2 version used the raw code vector d_c",
                f"{at}.nva.token_form",
                "raw_code",
            )
            for at in (E2, F)
        ),
    ),
    CardEntry(
        "nva_detach",
        "NVA row detached in pretraining",
        "yes (gradient reaches only the fusion encoder and ITM head)",
        "[A] NAS_METHOD §4.6",
        ((f"{E2}.nva.detach", Equals(True)),),
        kind="decision",
        requires="nva",
    ),
    # ---- fine-tuning: [A]'s retrieval recipe with NTA (NAS_METHOD §5, §6) -----------------------------
    CardEntry(
        "finetune_init",
        "fine-tuning starts from",
        "the stage-2 checkpoint (after one stage-2 epoch)",
        "[A] NAS_METHOD §6 (fine-tuning starts from checkpoint_30)",
        ((f"{FT}.init_from", Equals(S2)),),
        kind="decision",
    ),
    CardEntry(
        "finetune_epochs",
        "fine-tuning epochs",
        "COCO, 5 epochs (full passes)",
        "[A] NAS_METHOD §5 (ALBEF configs/Retrieval_coco.yaml)",
        ((f"{FT}.train.epochs", Equals(5)), (f"{FT}.train.max_steps_per_epoch", Equals(None))),
        kind="decision",
    ),
    CardEntry(
        "finetune_lr",
        "fine-tuning learning rate",
        "AdamW lr 1e-5, cosine to 1e-6",
        "[A] NAS_METHOD §5 (ALBEF configs/Retrieval_coco.yaml)",
        (
            (f"{FT}.train.schedule.lr", Equals(1e-5)),
            (f"{FT}.train.schedule.min_lr", Equals(1e-6)),
            (f"{FT}.train.schedule.warmup_steps", Equals(0)),
        ),
        kind="decision",
        known_differences=(
            KnownDifference(
                "[A]",
                "a flat warm-up (warm-up lr = lr = 1e-5) and ALBEF's per-epoch cosine steps; the harness "
                "has no warm-up (the lr starts at 1e-5 either way) and decays per iteration",
            ),
        ),
    ),
    CardEntry(
        "finetune_weight_decay",
        "fine-tuning weight decay",
        "AdamW, weight decay 0.02",
        "[A] NAS_METHOD §5 (ALBEF configs/Retrieval_coco.yaml)",
        ((f"{FT}.train.optim.weight_decay", Equals(0.02)),),
        kind="decision",
        note="AdamW betas, eps and clipping: see AdamW betas, eps; gradient clipping",
    ),
    CardEntry(
        "finetune_batch",
        "fine-tuning batch size",
        "512 (8 GPUs x 64, the pretraining loader)",
        "[D] (the paper states none; the stage shares `loader` with pretraining)",
        (("loader.batch_size_per_gpu", Equals(64)), (f"{FT}.train.launch.nproc_per_node", Equals(8))),
        kind="decision",
        known_differences=(
            KnownDifference(
                "[A]", "32 images per GPU (ALBEF's Retrieval_coco.yaml)", "loader.batch_size_per_gpu", 32
            ),
        ),
    ),
    CardEntry(
        "finetune_text_length",
        "fine-tuning text length",
        "25 BERT tokens (the pretraining length)",
        "[D] (the paper states none; the stage shares `data` with pretraining)",
        (("data.text_max_length", Equals(25)),),
        kind="decision",
        known_differences=(
            KnownDifference("[A]", "text length 30 (ALBEF's Retrieval.py)", "data.text_max_length", 30),
        ),
    ),
    CardEntry(
        "finetune_objectives",
        "fine-tuning objectives",
        "ITC (+NTA text) + ITM (4B, +NTA) with momentum distillation; no MLM",
        "[A] NAS_METHOD §5, §6 (ALBEF's retrieval fine-tuning)",
        ((f"{FT}.mlm_weight", Equals(0.0)), (f"{F}.distill", Equals(True))),
        kind="decision",
        known_differences=(
            KnownDifference("[A]", "in-batch ITM negatives exclude captions of the same image"),
        ),
    ),
    CardEntry(
        "finetune_alpha",
        "fine-tuning distillation weight α",
        "0.4, ramped over the first epoch",
        "[B] ALBEF configs/Retrieval_coco.yaml (alpha 0.4, warm_up true), as [A]",
        ((f"{FT}.distillation.alpha", Equals(0.4)), (f"{FT}.distillation.ramp", Equals(True))),
        kind="base",
    ),
    CardEntry(
        "finetune_queue",
        "ITC queue update in fine-tuning",
        "every step",
        "[A] NAS_METHOD §6 ([A] updates the queue in fine-tuning)",
        ((f"{F}.queue_update", Equals(True)),),
        kind="decision",
        note="with model.overrides.queue_update: false ([A]'s pretraining), set "
        "finetune.model_overrides.queue_update: true",
    ),
    CardEntry(
        "finetune_vd_frozen",
        "codebook frozen in fine-tuning",
        "yes",
        "[A] NAS_METHOD §5, §6",
        ((f"{F}.vd.frozen", Equals(True)),),
        kind="decision",
        requires="vd",
    ),
    CardEntry(
        "finetune_nva",
        "NVA negatives in fine-tuning",
        "as in stage 2: on for NAS, off for the ALBEF and +VD ablations",
        "[P] NAS_METHOD §4.7, §6",
        ((f"{F}.nva_enabled", SameAs(f"{E2}.nva_enabled", "as in stage 2")),),
        requires="vd",
    ),
    CardEntry(
        "finetune_nva_detach",
        "NVA row detached in fine-tuning",
        "no (the NVA row reaches the ViT, the neck and the text encoder)",
        "[A] NAS_METHOD §4.6, §4.8",
        ((f"{F}.nva.detach", Equals(False)),),
        kind="decision",
        requires="nva",
    ),
)


def paper_card() -> tuple[CardEntry, ...]:
    """The card; keys are unique."""
    return PAPER_CARD


CARD = PAPER_CARD  # the name every recipe's card module gives it (nas.reporting.audit.card_for)


check_card(PAPER_CARD)
