"""Stage `finetune`: text-augmented fine-tuning (NAS_METHOD.md §5, §6).

The library code is `nas.recipes.finetune`; this script is what dvc.yaml runs (`python -m experiments.finetune`,
the same run as `nas finetune`): parse the command line, check the params, record the run with Sacred.
"""

from nas.recipes.finetune import main

if __name__ == "__main__":
    main()
