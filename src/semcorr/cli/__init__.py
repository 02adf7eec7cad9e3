"""The ``semcorr`` command line: one thin module per job, each calling into the stages."""
