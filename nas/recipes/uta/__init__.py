"""The UTA recipe (MUG_UTA.md §2): a student ViT aligned on its unmasked tokens to a frozen CLIP teacher.

Stages (dvc.yaml; `python -m experiments.uta --stage <stage>`, the same run as `nas uta`):

- `uta_teacher` trains and freezes the tiny open_clip CLIP on the synthetic pairs (paper scale: names
  an open_clip EVA-CLIP checkpoint from a local path instead) and records its zero-shot accuracy;
- `uta_pretrain --run arm=A --run seed=S`: ONE student run (masking arm A of `uta.arms`, the arms the
  claims compare, seed S of `uta.seeds`); dvc.yaml sweeps arm x seed with `matrix:`, so a new arm or
  seed is a params edit and only its run trains;
- `uta_context --run arm=A --run seed=S`: the same training for a context arm (A of `uta.context_arms`,
  shown, not judged; S of `uta.context_seeds`, default none: the figure shows their masks only), its
  outputs in the same layout (`paths`);
- `uta_finetune --run seed=S` (optional, `uta.finetune.enabled`): contrastive fine-tuning of the main
  arm's student of seed S with the teacher's text tower (optimizer: `uta.finetune.train.optim`);
- `uta_evaluate`: reads every run folder and writes the metrics, the findings and the figure data.

Every training run goes through `nas.engine.run.train_run` and every reload through `load_run`.
Modules: `card` (the params section and the paper card), `paths` (the output layout), `data`
(context, loaders, held-out images), `train` (the training stages and the reloaders),
`evaluate` (measurements, figure data, the evaluate stage), `findings` (the claims with intervals).
"""
