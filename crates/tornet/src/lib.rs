//! Placeholder: the private Tor network harness (being written).
