"""Stages `mug_vocabulary`, `mug_pretrain`, `mug_evaluate`: the MUG recipe (MUG_UTA.md §1).

The library code is `nas.recipes.mug`; this script is what dvc.yaml runs (`python -m experiments.mug
--stage <stage> [--run KEY=VALUE ...]`, the same run as `nas mug`): parse the command line, check the
params, record the run with Sacred.
"""

from nas.recipes.mug.stages import main

if __name__ == "__main__":
    main()
