"""Stage `build_vd`: the initial visual dictionary of a variant (NAS_METHOD.md §3, [D]).

The library code is `nas.recipes.build_vd`; this script is what dvc.yaml runs (`python -m experiments.build_vd`,
the same run as `nas build-vd`): parse the command line, check the params, record the run with Sacred.
"""

from nas.recipes.build_vd import main

if __name__ == "__main__":
    main()
