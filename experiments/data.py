"""Stage `data`: produce the image-caption pairs every later stage reads.

The library code is `nas.recipes.data`; this script is what dvc.yaml runs (`python -m experiments.data`,
the same run as `nas data`): parse the command line, check the params, record the run with Sacred.
"""

from nas.recipes.data import main

if __name__ == "__main__":
    main()
