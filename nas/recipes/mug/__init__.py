"""The MUG recipe (MUG_UTA.md §1): masked image reconstruction + captioning, in the same harness.

Stages (dvc.yaml; `python -m experiments.mug --stage <stage>`, the same run as `nas mug`):

- `mug_vocabulary`: the training captions, checked once: an empty caption is an error naming it or a
  counted skip (`mug.empty_captions`), captions longer than the context are counted (the tokenizer cuts
  them), and the caption decoder's corpus vocabulary is read off them;
- `mug_pretrain --run arm=A --run seed=S`: ONE training run (ablation arm A of `mug.arms`: MAE only,
  caption only, MUG; seed S of `mug.seeds`), equal steps for every arm; dvc.yaml sweeps arm x seed
  with `matrix:`, so a new arm or seed is a params edit and only its run trains;
- `mug_evaluate`: reads every run folder and scores the untrained model of every seed (same
  architecture, probes and seeds) and every run: held-out masked-patch MSE and caption cross-entropy
  (given the own image and a shuffled one) against their values at initialisation and the trivial
  baselines; linear probes per scene attribute on frozen encoder features; greedy and beam captions
  with per-attribute exact match; the fine-grained probes under the caption-likelihood scorer; a figure
  of samples; the claims with intervals over seeds and cases. It also gathers the runs' training
  summaries into metrics/mug/pretrain.json.

Every training run goes through `nas.engine.run.train_run` and every reload through `load_run`.
Modules: `card` (the params section and the paper card), `paths` (the output layout), `data`
(caption census, loaders, held-out set, evaluation inputs), `train` (the vocabulary and training
stages), `evaluate` (measurements and the evaluate stage), `findings` (the claims with intervals),
`stages` (the command line).
"""
