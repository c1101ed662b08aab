"""Stage `report`: reports/results.md, reports/figures/*.png and metrics/findings.json from the metric

The library code is `nas.recipes.report`; this script is what dvc.yaml runs (`python -m experiments.report`,
the same run as `nas report`): parse the command line, check the params, record the run with Sacred.
"""

from nas.recipes.report import main

if __name__ == "__main__":
    main()
