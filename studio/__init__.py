"""The review studio (``emoguide studio``): a local web app over one run folder. No Ray, no models."""
