"""Stage `evaluate`: score one variant's models, one per study seed and checkpoint stage.

The library code is `nas.recipes.evaluate`; this script is what dvc.yaml runs (`python -m experiments.evaluate`,
the same run as `nas evaluate`): parse the command line, check the params, record the run with Sacred.
"""

from nas.recipes.evaluate import main

if __name__ == "__main__":
    main()
