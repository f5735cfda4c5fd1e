"""Ray wiring only: the CLI, the dataset graph and its driver, the stages' actors, the generation pass and
job submission. The application logic they run lives in :mod:`emoguide` and :mod:`models`."""
