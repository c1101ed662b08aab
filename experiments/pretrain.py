"""Stages `pretrain_stage1` and `pretrain_stage2`: train one variant through the one Ignite engine.

The library code is `nas.recipes.pretrain`; this script is what dvc.yaml runs (`python -m experiments.pretrain`,
the same run as `nas pretrain`): parse the command line, check the params, record the run with Sacred.
"""

from nas.recipes.pretrain import main

if __name__ == "__main__":
    main()
