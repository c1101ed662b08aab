"""The recipes: the library code of every pipeline stage, above the run layer (nas.engine.run).

`nas.recipes.stage` turns a command line into a checked params dict and a Sacred record; `pretrain`,
`finetune`, `build_vd`, `evaluate`, `data`, `report` are the NAS study's stages; `mug/` and `uta/` the
companion recipes (each with its paper card). experiments/<stage>.py only calls into these.
"""

import nas.recipes.sections  # noqa: F401  (registers the sections typed above nas.config)
from nas.reporting.audit import register_card

# Every recipe's paper card, for the audit (`nas audit`, the report): module paths, imported on use.
register_card("nas", "nas.recipes.paper_card")
register_card("mug", "nas.recipes.mug.card")
register_card("uta", "nas.recipes.uta.card")
