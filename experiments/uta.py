"""Stages `uta_teacher`, `uta_pretrain`, `uta_context`, `uta_finetune`, `uta_evaluate`: the UTA recipe
(MUG_UTA.md §2).

The library code is `nas.recipes.uta` (its docstring tours the stages); this script is what dvc.yaml runs
(`python -m experiments.uta --stage <stage> [--run KEY=VALUE ...]`, the same run as `nas uta`): parse the
command line, check the params, record the run with Sacred.
"""

from nas.recipes.uta.stages import main

if __name__ == "__main__":
    main()
