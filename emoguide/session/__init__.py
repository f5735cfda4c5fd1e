"""Per-session logic run by the reducer: utterances, roles, face tracks, dissonance, redaction."""
