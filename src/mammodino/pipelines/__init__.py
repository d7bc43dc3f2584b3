"""Pipelines: library steps chained into one resumable run (`mammodino demo`), for the commands.

They call the same library functions as the subcommands (synth, prepare, train, embed, eval),
never the command line, so they sit between `commands` and `report` in the layers.
"""
