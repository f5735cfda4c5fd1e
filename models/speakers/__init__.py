"""Speaker diarization: speaker embedders behind one protocol, speech windows, clustering and speaker
per word."""
