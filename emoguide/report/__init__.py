"""The static HTML report of a run (templates and stylesheet in ``assets/``)."""
